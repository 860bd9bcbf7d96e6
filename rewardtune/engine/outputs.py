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
def captioned_grid(images: torch.Tensor, prompts: list[str], rewards: dict[str, list[float]], *, cell: int | None = None,
                   cols: int | None = None, title: str = "", verdicts: dict[str, list[str]] | None = None,
                   ok: list[bool | None] | None = None):
    """A PIL grid: each image upscaled to `cell` px (nearest, so small images stay sharp), with its prompt
    (wrapped at word boundaries), any verdicts (e.g. the shapes judge's "saw red circle: ok") and the rewards of
    the other terms written under it. `ok[i]` colours image i's verdict line green (True) or red (False)."""
    import textwrap

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = images.shape[0]
    cols = max(1, min(cols or (8 if n > 16 else 4), n))
    cell = cell or (128 if cols > 4 else 192)
    rows = math.ceil(n / cols)
    chars = max(8, (cell - 6) // 6)  # the default bitmap font is 6 px per character
    verdicts = verdicts or {}

    def lines_of(i: int) -> list[tuple[str, str]]:
        out = [(ln, "black") for ln in textwrap.wrap(prompts[i], chars, break_long_words=True)[:3]]
        for v in verdicts.values():
            colour = "black" if ok is None or ok[i] is None else ("#1a7f37" if ok[i] else "#cf222e")
            out += [(ln, colour) for ln in textwrap.wrap(v[i], chars)[:2]]
        out += [(f"{k}: {v[i]:.4g}"[:chars], "#444444") for k, v in rewards.items() if k not in verdicts]
        return out

    per = [lines_of(i) for i in range(n)]
    text_h = 12 * max((len(p) for p in per), default=1) + 6
    head = 18 if title else 0
    grid = Image.new("RGB", (cols * cell, head + rows * (cell + text_h)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    arr = (images.detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype("uint8")
    for i in range(n):
        x0, y0 = (i % cols) * cell, head + (i // cols) * (cell + text_h)
        grid.paste(Image.fromarray(arr[i]).resize((cell - 4, cell - 4), Image.NEAREST), (x0 + 2, y0 + 2))
        for j, (line, colour) in enumerate(per[i]):
            draw.text((x0 + 3, y0 + cell + 2 + 12 * j), line, fill=colour, font=font)
    return grid


def comparison_grid(before, after, *, n: int = 16, cols: int = 8, cell: int = 96, title: str = ""):
    """Before/after pairs of the same prompts on the same noise: a row of `before` images above the matching row
    of `after` images. Each side is `(pixels, prompts, labels, ok)`: `labels[i]` (e.g. what the shapes judge saw)
    is written under image i, green when `ok[i]`, red when not."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n = min(n, before[0].shape[0], after[0].shape[0])
    pairs = math.ceil(n / cols)
    label_w = 56
    band = cell + 28
    head = 18 if title else 0
    grid = Image.new("RGB", (label_w + cols * cell, head + pairs * (2 * band + 10)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    for side, (pix, prompts, verdicts, ok) in enumerate((before, after)):
        arr = (pix[:n].detach().float().clamp(0, 1).cpu().permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype("uint8")
        for i in range(n):
            r, c = divmod(i, cols)
            x0 = label_w + c * cell
            y0 = head + r * (2 * band + 10) + side * band
            if c == 0:
                draw.text((4, y0 + cell // 2 - 6), ("before", "after")[side], fill="black", font=font)
            grid.paste(Image.fromarray(arr[i]).resize((cell - 4, cell - 4), Image.NEAREST), (x0 + 2, y0 + 2))
            if side == 0:
                draw.text((x0 + 3, y0 + cell), prompts[i].removeprefix("a ").removeprefix("an ")[:(cell - 6) // 6],
                          fill="black", font=font)
            if verdicts is not None:
                colour = "black" if ok is None or ok[i] is None else ("#1a7f37" if ok[i] else "#cf222e")
                draw.text((x0 + 3, y0 + cell + 12 - 12 * (side == 1)), verdicts[i][:(cell - 6) // 6], fill=colour,
                          font=font)
    return grid
