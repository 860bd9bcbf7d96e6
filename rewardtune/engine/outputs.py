"""Everything a run writes: resolved spec and versions, metrics (JSONL + tensorboard), captioned image grids,
and checkpoints. Where each file goes is `rewardtune.rundir.RunDir`'s business; this module writes and reads them.

Checkpoints hold no pickle: tensors go to a safetensors file and everything else (step, optimizer
hyperparameters, running statistics, RNG states, ...) to JSON, so loading one can never run code. Each is one
directory, written under a temporary name, fsynced and renamed into place: a kill -9 or a full disk mid-save
leaves the previous checkpoints as they were and no partial file.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rewardtune.errors import CheckpointError, ExistingRunError, OutputDirError, ResumeSpecError
from rewardtune.rundir import (
    CheckpointRef,
    RunDir,
    RunLock,
    atomic_write_bytes,
    fsync_dir,
    iter_tmp,
    tmp_name,
    write_error,
)

log = logging.getLogger("rewardtune.engine")

CHECKPOINT_FORMAT = "rewardtune-checkpoint/1"
STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("rewardtune", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "pydantic",
                "numpy", "bitsandbytes"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    out["cuda"] = str(torch.version.cuda)
    return out


def _spec_yaml(spec: Any) -> str:
    """spec.yaml's text: plain YAML without anchors or aliases (`RunDir.read_spec` refuses files that have any)."""
    import yaml

    class NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    return yaml.dump(spec.model_dump(mode="json"), Dumper=NoAliases, sort_keys=False)


def spec_data(spec: Any) -> dict[str, Any]:
    """A validated spec as saved in spec.yaml (and compared on resume): plain YAML data."""
    import yaml

    return yaml.safe_load(_spec_yaml(spec))


def write_run_info(run: RunDir, spec: Any, *, write_spec: bool = True) -> None:
    """versions.json for this attempt; spec.yaml when the run starts (a resumed run keeps the one it began with)."""
    run.path.mkdir(parents=True, exist_ok=True)
    if write_spec and spec is not None:
        atomic_write_bytes(run.spec_file, _spec_yaml(spec).encode(), "spec.yaml")
    atomic_write_bytes(run.versions_file, json.dumps(library_versions(), indent=2).encode(), "versions.json")


# ---------------------------------------------------------------------------------------- state <-> JSON
def encode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """A checkpoint's state as JSON data; every tensor goes to `tensors`, named by its path in the state.

    Plain dicts with string keys stay dicts; other dicts, tuples, numpy arrays, tensors and non-finite floats
    become `{"$kind": ...}` markers, so that `decode_state` gives back the same types and the same values."""
    return _Encoder(tensors).encode(obj, "")


class _Encoder:
    def __init__(self, tensors: dict[str, torch.Tensor]):
        self.tensors = tensors
        self.storages: set[int] = set()

    def encode(self, obj: Any, path: str) -> Any:
        import numpy as np

        if obj is None or isinstance(obj, bool | str):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else {"$float": repr(obj)}
        if isinstance(obj, torch.Tensor):
            return {"$tensor": self.tensor(obj, path or ".")}
        if isinstance(obj, np.ndarray):
            return {"$ndarray": {"dtype": str(obj.dtype), "shape": list(obj.shape), "data": obj.reshape(-1).tolist()}}
        if isinstance(obj, np.generic):
            return self.encode(obj.item(), path)
        if isinstance(obj, tuple):
            return {"$tuple": [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]}
        if isinstance(obj, list):
            return [self.encode(v, f"{path}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in obj):
                return {k: self.encode(v, f"{path}/{k}") for k, v in obj.items()}
            return {"$dict": [[self.encode(k, f"{path}/key{i}"), self.encode(v, f"{path}/{k}")]
                              for i, (k, v) in enumerate(obj.items())]}
        raise TypeError(f"a checkpoint holds tensors, numbers, strings, lists, tuples and dicts only; "
                        f"found {type(obj).__name__} at '{path or '.'}'")

    def tensor(self, t: torch.Tensor, name: str) -> str:
        while name in self.tensors:
            name += "'"
        t = t.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in self.storages:
            t = t.clone()  # safetensors refuses tensors that share memory
        self.storages.add(t.untyped_storage().data_ptr())
        self.tensors[name] = t.contiguous()
        return name


def decode_state(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    import numpy as np

    if isinstance(obj, list):
        return [decode_state(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        (kind, val), = obj.items()
        if kind == "$tensor":
            if val not in tensors:
                raise ValueError(f"tensor '{val}' is missing from {TENSORS_FILE}")
            return tensors[val]
        if kind == "$tuple":
            return tuple(decode_state(v, tensors) for v in val)
        if kind == "$dict":
            return {_hashable(decode_state(k, tensors)): decode_state(v, tensors) for k, v in val}
        if kind == "$float":
            if val not in ("nan", "inf", "-inf"):
                raise ValueError(f"bad float '{val}'")
            return float(val)
        if kind == "$ndarray":
            return np.asarray(val["data"], dtype=np.dtype(val["dtype"])).reshape(val["shape"])
    if any(isinstance(k, str) and k.startswith("$") for k in obj):
        raise ValueError(f"unknown entry {sorted(obj)} in {STATE_FILE}")
    return {k: decode_state(v, tensors) for k, v in obj.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(x) for x in k) if isinstance(k, list) else k


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(run: RunDir, step: int, state: dict[str, Any], keep: int, protect: int | None = None) -> Path:
    """Write checkpoints/step_XXXXXXXX/ atomically (temp directory, fsync, rename), then prune to the `keep`
    newest, and the step `protect` (the best eval's, `logging.select_by`). A failure leaves the previous
    checkpoints untouched and no temp directory."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    ck = run.checkpoints_dir
    what = f"the checkpoint of step {step}"
    try:
        ck.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(e, ck, what) from None
    for stale in iter_tmp(ck):  # left by a crash mid-save (the run lock says nobody else writes here)
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    tree = encode_state(state, tensors)
    token = uuid.uuid4().hex  # ties state.json to its tensors file
    final = run.checkpoint_dir(step)
    tmp = tmp_name(final)
    try:
        tmp.mkdir()
    except OSError as e:
        raise write_error(e, ck, what) from None
    try:
        try:
            save_file(tensors, str(tmp / TENSORS_FILE), metadata={"format": CHECKPOINT_FORMAT, "token": token})
        except SafetensorError as e:  # its I/O errors (a full disk) carry their errno only in the text
            raise _io_error(e) from e
        _fsync_file(tmp / TENSORS_FILE)
        manifest = {"format": CHECKPOINT_FORMAT, "step": step, "token": token, "state": tree}
        with open(tmp / STATE_FILE, "wb") as f:
            f.write(json.dumps(manifest, allow_nan=False).encode())
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # the same step again: swap, so a crash leaves one of the two complete
            old = tmp_name(final, ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(ck)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise write_error(e, final, what) from None
        raise
    for old in run.checkpoints()[:-keep]:
        if old.step != protect:
            shutil.rmtree(old.path, ignore_errors=True)
    return final


def _io_error(e: Exception) -> Exception:
    """safetensors reports I/O failures as 'SafetensorError: ... (os error 28)': recover the errno."""
    m = re.search(r"os error (\d+)", str(e))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return e


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CorruptCheckpoint(Exception):
    """A checkpoint directory that cannot be read back (cut by a crash, edited, or not one of ours)."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint directory written by `save_checkpoint`. Only JSON and safetensors are parsed: nothing in
    it can run code. Raises CorruptCheckpoint with the reason."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        manifest = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CorruptCheckpoint(f"{STATE_FILE} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != CHECKPOINT_FORMAT:
        raise CorruptCheckpoint(f"{STATE_FILE} is not a {CHECKPOINT_FORMAT} manifest")
    tfile = path / TENSORS_FILE
    try:
        with safe_open(str(tfile), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(tfile))
    except (OSError, SafetensorError) as e:
        raise CorruptCheckpoint(f"{TENSORS_FILE} is unreadable ({e})") from None
    if meta.get("token") != manifest.get("token"):
        raise CorruptCheckpoint(f"{STATE_FILE} and {TENSORS_FILE} come from different saves")
    try:
        state = decode_state(manifest["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CorruptCheckpoint(f"{STATE_FILE} does not describe a state ({e})") from None
    if not isinstance(state, dict) or state.get("step") != manifest.get("step"):
        raise CorruptCheckpoint(f"{STATE_FILE} holds no state of step {manifest.get('step')}")
    return state


@dataclass
class Resumable:
    """The checkpoint a run resumes from, and the newer ones that could not be read (skipped)."""

    ref: CheckpointRef
    state: dict[str, Any]
    skipped: list[tuple[CheckpointRef, str]] = field(default_factory=list)


def latest_resumable(run: RunDir) -> Resumable | None:
    """The newest checkpoint that loads (a corrupt newer one is skipped for the one before). None when the run
    has no checkpoint; CheckpointError when it has some and none can be used (the files are left as they are)."""
    found = run.checkpoints()
    legacy = run.legacy_checkpoints()
    skipped: list[tuple[CheckpointRef, str]] = []
    for ref in reversed(found):
        try:
            state = load_checkpoint(ref.path)
        except CorruptCheckpoint as e:
            skipped.append((ref, str(e)))
            continue
        for bad, why in skipped:
            log.warning("checkpoint %s cannot be read (%s); resuming from step %d instead", bad.path, why, ref.step)
        if legacy:
            log.warning("ignoring %d pickle checkpoint file(s) in %s (never loaded: unpickling can run code)",
                        len(legacy), run.checkpoints_dir)
        return Resumable(ref, state, skipped)
    if not found and not legacy:
        return None
    lines = [f"  {ref.path.name}: {why}" for ref, why in reversed(skipped)]
    lines += [f"  {p.name}: a pickle file (an older rewardtune's format, or planted): never loaded, since "
              "unpickling can run code" for p in legacy]
    raise CheckpointError(
        f"cannot resume the run in {run.path}: none of its checkpoints can be used:\n" + "\n".join(lines) + "\n"
        "Nothing was changed. Start the run over in this directory (overwrite), choose another output directory, "
        f"or remove the unusable entries from {run.checkpoints_dir} if an older usable checkpoint remains.")


def set_aside(run: RunDir, refs: list[CheckpointRef]) -> None:
    """Rename unreadable checkpoints newer than the one resumed from out of the way (kept, for a post-mortem), so
    that pruning never deletes a good checkpoint in favour of a broken one."""
    for ref in refs:
        target = ref.path.with_name(f"corrupt-{ref.path.name}")
        n = 1
        while target.exists():
            n += 1
            target = ref.path.with_name(f"corrupt{n}-{ref.path.name}")
        os.replace(ref.path, target)


# ------------------------------------------------------------------------------------------ starting a run
@dataclass
class RunStart:
    """A run directory made ready for a run: checked, locked, and (on resume) the checkpoint to continue from."""

    run: RunDir
    lock: RunLock | None
    resume_from: Resumable | None
    clear: bool = False  # overwrite a run: its outputs are removed once the models have loaded

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


ALLOWED_SPEC_CHANGES = ("launcher", "logging.progress", "output_dir")

#: What a spec saved before a field existed meant, where that is not the field's default: (method name or "*",
#: section.key) -> the value a run had then. A field whose default keeps the old behaviour needs no entry; one
#: whose default changes what a run does must have one, or resuming an older run would silently change it.
LEGACY_VALUES: dict[tuple[str, str], Any] = {
    ("ranked", "method.baseline"): 0.0,  # before `baseline`, ranked fine-tuned on the kept images alone
}


def saved_spec_as_now(saved: dict[str, Any]) -> dict[str, Any]:
    """A run's saved spec as this version reads it: keys it lacks (fields added since the run started) take their
    LEGACY_VALUES entry, else the field's default, so that upgrading rewardtune does not by itself block resuming
    a run. A saved spec this version's schema refuses (a field since removed) is returned as it is."""
    import copy

    from pydantic import ValidationError

    from rewardtune.spec.schema import Spec

    data = copy.deepcopy(saved)
    method = data.get("method") if isinstance(data.get("method"), dict) else {}
    for (name, path), value in LEGACY_VALUES.items():
        section, key = path.split(".")
        block = data.get(section)
        if isinstance(block, dict) and key not in block and name in ("*", method.get("name")):
            block[key] = value
    try:
        return spec_data(Spec.model_validate(data))
    except ValidationError:
        return saved


def spec_differences(saved: Any, given: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted path, saved, given) for each leaf where two spec dumps differ, except ALLOWED_SPEC_CHANGES."""
    if path in ALLOWED_SPEC_CHANGES:
        return []
    if isinstance(saved, dict) and isinstance(given, dict):
        out = []
        for k in list(saved) + [k for k in given if k not in saved]:
            out += spec_differences(saved.get(k), given.get(k), f"{path}.{k}" if path else str(k))
        return out
    if isinstance(saved, list) and isinstance(given, list) and len(saved) == len(given):
        out = []
        for i, (a, b) in enumerate(zip(saved, given, strict=True)):
            out += spec_differences(a, b, f"{path}[{i}]")
        return out
    return [] if saved == given else [(path, saved, given)]


def check_resume_spec(run: RunDir, spec: Any) -> None:
    """A resumed run continues the run it resumes: its spec must be the one saved in spec.yaml, but for
    ALLOWED_SPEC_CHANGES (where it runs, and how progress shows). CheckpointError listing the differences."""
    saved = run.read_spec()
    if saved is None or spec is None:
        return
    saved = saved_spec_as_now(saved)
    diffs = spec_differences(saved, spec_data(spec))
    if not diffs:
        return

    def short(v: Any) -> str:
        text = json.dumps(v, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    lines = [f"  {p}: {short(a)} in the run, {short(b)} now" for p, a, b in diffs[:12]]
    if len(diffs) > 12:
        lines.append(f"  ... and {len(diffs) - 12} more")
    hint = ""
    pre_saved = str((saved.get("model") or {}).get("pretrained", ""))
    pre_given = str(spec_data(spec).get("model", {}).get("pretrained", ""))
    if pre_saved.startswith("zoo:") != pre_given.startswith("zoo:"):
        hint = (" This run was started " + ("on the tiny twins: resume it on them too." if pre_saved.startswith("zoo:")
                                             else "on real weights: resume it without tiny twins."))
    raise ResumeSpecError(
        f"the spec given to resume {run.path} differs from the one the run was started with "
        f"({run.spec_file}):\n" + "\n".join(lines) + "\n"
        "Resume with the same spec and overrides, or start a new run in another output directory." + hint)


def open_run_dir(output_dir: str | Path, *, resume: bool, overwrite: bool, spec: Any = None,
                 main: bool = True) -> RunStart:
    """Everything about the output directory that can fail, checked before any model is loaded: it is a writable
    directory, no other process runs in it (lock, held until `release`), it holds no run unless resuming or
    overwriting, and a resume has a readable checkpoint and the same spec. Ranks other than 0 only read the
    checkpoint to resume from."""
    run = RunDir(output_dir)
    if not main:
        return RunStart(run, None, latest_resumable(run) if resume else None)
    run.check_writable()
    lock = run.lock()
    try:
        found = None
        if resume:
            found = latest_resumable(run)
            if found is not None:
                check_resume_spec(run, spec)
        elif run.has_run() and not overwrite:
            raise ExistingRunError(f"{run.path} already holds checkpoints of a run. Resume it, start over in it "
                                   "(overwrite), or choose another output directory.")
    except BaseException:
        lock.release()
        raise
    # this attempt's result replaces the last one's; until it is written, `status` sees a run without a result
    with contextlib.suppress(FileNotFoundError):
        run.result_file.unlink()
    return RunStart(run, lock, found, clear=not resume and overwrite and run.has_run())


# ------------------------------------------------------------------------------------------------------- metrics
class MetricsWriter:
    """metrics.jsonl, one line per logged step, and the trackers: tensorboard, and wandb when `wandb` gives its
    `wandb.init` arguments (project, name, config). A resumed run first drops the lines after the step it resumes
    from, so every step appears once; its wandb run continues under the same id."""

    def __init__(self, run: RunDir, tensorboard: bool, resume_from_step: int | None = None, *,
                 wandb: dict[str, Any] | None = None):
        self.path = run.metrics_file
        if resume_from_step is not None and self.path.exists():
            kept = [json.dumps(rec) for rec in run.metrics() if rec.get("step", 0) <= resume_from_step]
            atomic_write_bytes(self.path, ("\n".join(kept) + ("\n" if kept else "")).encode(), "metrics.jsonl")
        elif resume_from_step is None and self.path.exists():
            self.path.unlink()
        try:
            # unbuffered: a line reaches the file at once, and a failed write leaves nothing to flush at close
            self.f = open(self.path, "ab", buffering=0)  # noqa: SIM115  (kept open for the run; closed in close())
        except OSError as e:
            raise write_error(e, self.path, "metrics.jsonl") from None
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                from rewardtune.errors import MissingDependencyError

                raise MissingDependencyError("tensorboard", "tensorboard", "logging.tensorboard") from e
            self.tb = SummaryWriter(str(run.tensorboard_dir), purge_step=resume_from_step)
        self.wb = None
        if wandb is not None:
            self.wb = _wandb_run(run, wandb, resumed=resume_from_step is not None)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        rec = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                for k, v in metrics.items()}}
        try:
            self.f.write((json.dumps(rec) + "\n").encode())
        except OSError as e:
            raise write_error(e, self.path, f"the metrics of step {step}") from None
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, int | float) and math.isfinite(float(v)):
                    self.tb.add_scalar(k, float(v), step)
        if self.wb is not None:
            self.wb.log({k: v for k, v in rec.items() if k != "step" and v is not None}, step=step)

    def add_image(self, tag: str, path: Path, step: int) -> None:
        if self.tb is not None:
            import numpy as np
            from PIL import Image

            arr = np.asarray(Image.open(path).convert("RGB"))
            self.tb.add_image(tag, arr, step, dataformats="HWC")
        if self.wb is not None:
            import wandb

            self.wb.log({tag: wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.f.close()
        if self.tb is not None:
            self.tb.close()
        if self.wb is not None:
            self.wb.finish()


def _wandb_run(run: RunDir, settings: dict[str, Any], resumed: bool) -> Any:
    """A wandb run whose files live under RUN_DIR/wandb; a resumed run continues the id kept there."""
    try:
        import wandb
    except ImportError as e:
        from rewardtune.errors import MissingDependencyError

        raise MissingDependencyError("wandb", "wandb", "logging.trackers: [wandb]") from e
    run.wandb_dir.mkdir(parents=True, exist_ok=True)
    id_file = run.wandb_dir / "run-id.txt"
    run_id = id_file.read_text().strip() if resumed and id_file.is_file() else None
    if not run_id:
        run_id = uuid.uuid4().hex[:12]  # wandb takes any id of letters and digits
        id_file.write_text(run_id + "\n")
    return wandb.init(dir=str(run.path), id=run_id, resume="allow", **settings)


__all__ = ["CHECKPOINT_FORMAT", "CorruptCheckpoint", "MetricsWriter", "OutputDirError", "Resumable", "RunStart",
           "captioned_grid", "check_resume_spec", "latest_resumable", "load_checkpoint", "open_run_dir",
           "save_checkpoint", "spec_differences", "write_run_info"]


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
            out += [(ln, colour) for ln in textwrap.wrap(v[i], chars)[:3]]
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


def judge_labels(verdicts: dict[str, list[str]]) -> list[str] | None:
    """What the first judge saw in each image (`saw red circle: ...` -> `red circle`), short enough to write under
    an image of a comparison grid; None when no reward gave verdicts."""
    labels = next(iter(verdicts.values()), None)
    if labels is None:
        return None
    return [v.removeprefix("saw ").split(":")[0].replace("? ?", "nothing clear") for v in labels]


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
