"""Everything a run writes: resolved spec and versions, metrics (JSONL + tensorboard), captioned image grids,
and atomic checkpoints (temp file, fsync, rename: a kill -9 mid-save leaves the previous checkpoint usable)."""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import re
from pathlib import Path
from typing import Any

import torch

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("rewardtune", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "pydantic",
                "numpy", "bitsandbytes"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    out["cuda"] = str(torch.version.cuda)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_run_info(out: Path, spec: Any) -> None:
    import yaml

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "spec.yaml", yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode())
    atomic_write_bytes(out / "versions.json", json.dumps(library_versions(), indent=2).encode())


# ---------------------------------------------------------------------------------------------------- checkpoints
def save_checkpoint(ckpt_dir: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write `step_XXXXXXXX.pt` atomically, then prune to the `keep` newest."""
    import io

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    path = ckpt_dir / f"step_{step:08d}.pt"
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))  # type: ignore[union-attr]


def load_latest_checkpoint(ckpt_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """Newest checkpoint that loads; a truncated or corrupt newest one is skipped for the one before."""
    for path in reversed(list_checkpoints(ckpt_dir)):
        try:
            return path, torch.load(path, map_location="cpu", weights_only=False)
        except Exception:  # noqa: BLE001  (partial file from a crash: fall back)
            continue
    return None


# ------------------------------------------------------------------------------------------------------- metrics
class MetricsWriter:
    def __init__(self, out: Path, tensorboard: bool, resume_from_step: int | None = None):
        self.path = out / "metrics.jsonl"
        if resume_from_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_from_step:
                        kept.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
            atomic_write_bytes(self.path, ("\n".join(kept) + ("\n" if kept else "")).encode())
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()
        self.f = open(self.path, "a")  # noqa: SIM115  (kept open for the run; closed in close())
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                from rewardtune.errors import MissingDependencyError

                raise MissingDependencyError("tensorboard", "tensorboard", "logging.tensorboard") from e
            self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=resume_from_step)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        self.f.write(json.dumps(rec) + "\n")
        self.f.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), step)

    def add_image(self, tag: str, path: Path, step: int) -> None:
        if self.tb is not None:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            self.tb.add_image(tag, arr, step, dataformats="HWC")

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()


# --------------------------------------------------------------------------------------------------------- grids
def captioned_grid(images: torch.Tensor, prompts: list[str], rewards: dict[str, list[float]], *, cell: int = 192,
                   cols: int = 4, title: str = ""):
    """A PIL grid: each image upscaled to `cell` px, with its prompt and rewards written under it."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = images.shape[0]
    cols = max(1, min(cols, n))
    rows = math.ceil(n / cols)
    lines_per = 2 + len(rewards)
    text_h = 12 * lines_per + 4
    head = 16 if title else 0
    grid = Image.new("RGB", (cols * cell, head + rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 2), title, fill="black", font=font)
    arr = (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype("uint8")
    chars = max(8, cell // 6)
    for i in range(n):
        x0, y0 = (i % cols) * cell, head + (i // cols) * (cell + text_h)
        grid.paste(Image.fromarray(arr[i]).resize((cell, cell), Image.NEAREST), (x0, y0))
        p = prompts[i]
        text = [p[:chars], p[chars:2 * chars]] + [f"{k}: {v[i]:.4g}" for k, v in rewards.items()]
        for j, line in enumerate(text):
            draw.text((x0 + 3, y0 + cell + 2 + 12 * j), line, fill="black", font=font)
    return grid
