"""Scoring image files with one or more rewards: the engine behind `rewardtune score`, usable from Python.

    from rewardtune.scoring import load_rewards, score_files
    rewards = load_rewards(["imagereward", "clip:vit-b-32"])
    rows = score_files(["imgs/", "more.png"], rewards, prompt="a red bicycle")
    for row in rank_rows(rows, rewards):
        print(row.rank, row.path, row.scores)

How files are scored:
- Headers are read first (`rewardtune.images.inspect_image`): unusable files (missing, empty, not an image,
  oversized) get an error row and are never decoded.
- The remaining files are grouped by size and scored in batches of `batch_size`. Each image is decoded once and
  the same pixels go to every reward. Same-size batching leaves every score equal to scoring that image alone
  (only floating-point summation order differs); images are never resized to fit a batch.
- A file that fails to decode (corrupt or truncated data) gets its own error row; the rest of its batch is still
  scored. If a reward raises on a batch, the batch is retried image by image so only the offending file fails.
- Files are decoded to uint8 in a few threads, one batch ahead of the rewards, and converted to float on the
  rewards' device.
"""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rewardtune.errors import UsageError
from rewardtune.images import DEFAULT_MAX_PIXELS, ImageFileError, discover_images, inspect_image, load_uint8


# ------------------------------------------------------------------------------------------ reward selection
@dataclass(frozen=True)
class RewardChoice:
    """One `--reward` argument: registry name, preset (None = the card's default) and the column label."""

    name: str
    preset: str | None
    label: str


def parse_reward_arg(arg: str, *, tiny: bool = False) -> RewardChoice:
    """`NAME` or `NAME:PRESET` -> RewardChoice. With `tiny`, a reward given without a preset uses `tiny`.

    `package.module:Class` (a reward given by import path) is kept whole: the part after the last `:` is a
    preset only when the part before it is a registered reward name.
    """
    from rewardtune.registry import registry

    arg = arg.strip()
    if not arg:
        raise UsageError("--reward needs a name, e.g. --reward imagereward or --reward clip:tiny")
    name, preset = arg, None
    head, sep, tail = arg.rpartition(":")
    if sep and head in registry().names():
        name, preset = head, tail or None
    if preset is None and tiny:
        preset = "tiny"
    return RewardChoice(name=name, preset=preset, label=arg)


def parse_weights_args(args: Sequence[str], labels: Sequence[str]) -> dict[str, str]:
    """`--weights LABEL=PATH` (or a bare PATH when one reward is scored) -> {label: hub id or directory}."""
    out: dict[str, str] = {}
    for a in args:
        label, sep, path = a.partition("=")
        if not sep:
            if len(labels) != 1:
                raise UsageError(f"--weights {a}: say which reward it is for, e.g. --weights {labels[0]}={a}")
            label, path = labels[0], a
        if label not in labels:
            raise UsageError(f"--weights {a}: '{label}' is not a reward being scored ({', '.join(labels)}).")
        if not path:
            raise UsageError(f"--weights {a}: give a directory or hub id after '='.")
        if label in out:
            raise UsageError(f"--weights for {label} is given twice.")
        out[label] = path
    return out


def load_rewards(args: Sequence[str | RewardChoice], *, tiny: bool = False, device: str = "cpu",
                 dtype: str = "float32", batch_size: int | None = None,
                 weights: dict[str, str] | None = None) -> RewardSet:
    """Build the rewards of `args` (names or `name:preset`) and load their weights now, so that missing weights
    fail before any image is read. `weights` maps a label to a hub id or local directory that replaces its
    preset's weights. Returns {label: Reward} in argument order."""
    from rewardtune.registry import load_reward

    choices = [a if isinstance(a, RewardChoice) else parse_reward_arg(a, tiny=tiny) for a in args]
    labels = [c.label for c in choices]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise UsageError(f"--reward {dup[0]} is given twice.")
    from rewardtune.rewards._shared import sharing

    out = RewardSet()
    with sharing():  # rewards that need the same frozen tower get one copy
        for c in choices:
            kw = {"weights": weights[c.label]} if weights and c.label in weights else {}
            r = load_reward(c.name, c.preset, device=device, dtype=dtype, max_batch_size=batch_size, **kw)
            r.load()
            out[c.label] = r
            out.choices[c.label] = c
    return out


class RewardSet(dict):
    """{label: Reward} in argument order, remembering which name and preset each label stands for."""

    def __init__(self) -> None:
        super().__init__()
        self.choices: dict[str, RewardChoice] = {}


def resolve_device(device: str) -> str:
    """`auto` -> cuda if available, else mps, else cpu. Anything else is checked to exist."""
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"Unknown device '{device}'. Use auto, cpu, cuda, cuda:N or mps.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: CUDA is not available in this torch build or on this machine.")
    return device


def needs_prompt(reward: Any) -> bool:
    """Whether a reward reads the prompt: its card's `inputs` (rewards registered as plain callables carry
    them only there), else the reward's own `inputs`."""
    from rewardtune.registry import get_card

    try:
        inputs = get_card(reward.name).inputs
    except Exception:  # noqa: BLE001 - a reward built outside the registry
        inputs = getattr(reward, "inputs", ("pixels", "prompt"))
    return "prompt" in tuple(inputs)


# --------------------------------------------------------------------------------------------- prompts file
def _key(p: str | Path) -> str:
    return os.path.normcase(os.path.abspath(os.path.expanduser(str(p))))


def read_prompts_file(path: str | Path) -> dict[Path, str]:
    """Read a CSV (`path,prompt`, header optional), a JSONL (`{"path": ..., "prompt": ...}` per line) or a JSON
    array of such objects.

    Relative image paths are taken relative to the prompts file's folder. Returns {path: prompt} in file order.
    """
    src = Path(path)
    if not src.is_file():
        raise UsageError(f"--prompts-file {src}: file not found.")
    base = src.parent
    entries: list[tuple[str, str, str]] = []  # (path, prompt, where: "line 3" / "entry 3")
    text = src.read_text(encoding="utf-8-sig")
    is_json = src.suffix.lower() in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith(("{", "["))
    if is_json:
        if text.lstrip().startswith("["):  # a JSON array of objects
            try:
                items = [(f"entry {i + 1}", o) for i, o in enumerate(json.loads(text))]
            except json.JSONDecodeError as e:
                raise UsageError(f"--prompts-file {src}, line {e.lineno}: not valid JSON ({e.msg}).") from None
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise UsageError(f"--prompts-file {src}, line {n}: not valid JSON ({e.msg}).") from None
        for n, obj in items:
            if not isinstance(obj, dict):
                raise UsageError(f"--prompts-file {src}, {n}: expected an object with 'path' and 'prompt'.")
            p = obj.get("path", obj.get("image", obj.get("file")))
            t = obj.get("prompt", obj.get("text"))
            if not isinstance(p, str) or not isinstance(t, str):
                raise UsageError(f"--prompts-file {src}, {n}: needs string fields 'path' and 'prompt', "
                                 f"got keys {sorted(obj)}.")
            entries.append((p, t, n))
    else:
        dialect = "excel-tab" if src.suffix.lower() == ".tsv" else "excel"
        rows = list(csv.reader(text.splitlines(), dialect=dialect))
        start, pi, ti = 0, 0, 1
        if rows:
            head = [c.strip().lower() for c in rows[0]]
            if "path" in head and "prompt" in head:
                start, pi, ti = 1, head.index("path"), head.index("prompt")
        for n, row in enumerate(rows[start:], start + 1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) <= max(pi, ti):
                raise UsageError(f"--prompts-file {src}, line {n}: expected 'path,prompt', got {row!r}.")
            entries.append((row[pi].strip(), row[ti], f"line {n}"))
    out: dict[Path, str] = {}
    keys: dict[str, tuple[str, str]] = {}
    for p, t, n in entries:
        if not p:
            raise UsageError(f"--prompts-file {src}, {n}: empty path.")
        full = Path(os.path.expanduser(p))
        if not full.is_absolute():
            full = base / full
        k = _key(full)
        if k in keys and keys[k][0] != t:
            raise UsageError(f"--prompts-file {src}, {n}: '{p}' already has a different prompt ({keys[k][1]}).")
        keys[k] = (t, n)
        out.setdefault(full, t)
    if not out:
        raise UsageError(f"--prompts-file {src}: no entries.")
    return out


# --------------------------------------------------------------------------------------------------- scoring
@dataclass
class Row:
    """One file's result. `scores` maps reward label -> score (missing when that reward failed on the file)."""

    index: int
    path: Path
    prompt: str | None
    scores: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    size: tuple[int, int] | None = None
    explain: dict[str, Any] = field(default_factory=dict)
    rank: int | None = None
    below_min: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": str(self.path), "prompt": self.prompt,
                "scores": {k: (v if math.isfinite(v) else None) for k, v in self.scores.items()},
                "width": self.size[0] if self.size else None, "height": self.size[1] if self.size else None,
                "below_min": self.below_min, "error": self.error,
                **({"explain": self.explain} if self.explain else {})}


def _is_fatal(e: BaseException) -> bool:
    from rewardtune.errors import MissingDependencyError, MissingWeightsError

    return isinstance(e, MissingWeightsError | MissingDependencyError | KeyboardInterrupt | MemoryError)


def _run_rewards(rows: list[Row], pixels, rewards: Mapping[str, Any], explain: bool) -> None:
    """Score one same-size batch with every reward; isolate failures to single files."""
    import torch

    prompts = [r.prompt or "" for r in rows]
    for label, reward in rewards.items():
        try:
            with torch.no_grad():
                s = reward(pixels, prompts).detach().float().cpu().tolist()
            for row, v in zip(rows, s, strict=True):
                row.scores[label] = float(v)
        except BaseException as e:
            if _is_fatal(e):
                raise
            if len(rows) > 1:  # find the file that breaks the reward; the others keep their scores
                for i, row in enumerate(rows):
                    _run_rewards([row], pixels[i:i + 1], {label: reward}, explain=False)
            else:
                msg = f"{label}: {type(e).__name__}: {e}"
                rows[0].error = msg if rows[0].error is None else f"{rows[0].error}; {msg}"
            continue
        if explain:
            try:
                with torch.no_grad():
                    info = reward.explain(pixels, prompts)
            except BaseException as e:
                if _is_fatal(e):
                    raise
                info = [{"error": f"{type(e).__name__}: {e}"}] * len(rows)
            if info is not None:
                for row, d in zip(rows, info, strict=True):
                    row.explain[label] = d


def score_files(paths: Iterable[str | Path], rewards: Mapping[str, Any], *, prompt: str | None = None,
                prompts: Mapping[str | Path, str] | None = None, batch_size: int = 16, explain: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
                progress: Callable[[int, int], None] | None = None, decode_workers: int | None = None) -> list[Row]:
    """Score every image under `paths` (files or folders, recursively) with every reward in `rewards`.

    The prompt of a file comes from `prompts` (path -> prompt) and falls back to `prompt`. Returns one Row per
    file in discovery order (use `rank_rows` to order them); a file that could not be scored has `error` set.
    `progress(done, total)` is called after each batch. Files are decoded by `decode_workers` threads
    (default: up to 8, one batch ahead of the rewards).
    """
    import torch

    if batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}.")
    if not rewards:
        raise UsageError("No reward given. Pass --reward NAME (see `rewardtune rewards`).")
    files = discover_images(paths)
    by_key = {_key(p): t for p, t in (prompts or {}).items()}
    wants_prompt = any(needs_prompt(r) for r in rewards.values())
    rows: list[Row] = []
    groups: dict[tuple[int, int], list[Row]] = {}
    for i, f in enumerate(files):
        row = Row(index=i, path=f, prompt=by_key.get(_key(f), prompt))
        rows.append(row)
        if wants_prompt and row.prompt is None:
            row.error = "no prompt for this file (give --prompt, or list the file in --prompts-file)"
            continue
        try:
            info = inspect_image(f, max_pixels=max_pixels, exif_transpose=exif_transpose)
        except ImageFileError as e:
            row.error = str(e)
            continue
        row.size = info.size
        groups.setdefault(info.size, []).append(row)

    total, done = len(rows), sum(1 for r in rows if r.error)
    if progress:
        progress(done, total)
    chunks = [g[i:i + batch_size] for g in groups.values() for i in range(0, len(g), batch_size)]
    if not chunks:
        return rows
    device = getattr(next(iter(rewards.values())), "device", "cpu")

    def decode(row: Row):
        try:
            return load_uint8(row.path, max_pixels=max_pixels, exif_transpose=exif_transpose)
        except ImageFileError as e:
            return e

    # Decoding runs in threads (PIL releases the GIL) one batch ahead of the rewards, so reading files overlaps
    # with the forward passes; at most two batches of uint8 pixels are in memory.
    workers = max(1, min(batch_size, decode_workers or min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewardtune-decode") as pool:
        pending = [pool.submit(decode, r) for r in chunks[0]]
        for ci, chunk in enumerate(chunks):
            results = [f.result() for f in pending]
            pending = [pool.submit(decode, r) for r in chunks[ci + 1]] if ci + 1 < len(chunks) else []
            ok, pix, odd = [], [], []
            for row, x in zip(chunk, results, strict=True):
                if isinstance(x, ImageFileError):
                    row.error = str(x)
                elif tuple(x.shape[-2:]) != (row.size[1], row.size[0]):
                    # orientation only known after decoding (PNG with a late eXIf chunk): score it on its own
                    row.size = (int(x.shape[-1]), int(x.shape[-2]))
                    odd.append((row, x))
                else:
                    ok.append(row)
                    pix.append(x)
            # uint8 -> float on the reward's device: identical values to load_pixels, a quarter of the copy
            if ok:
                _run_rewards(ok, torch.stack(pix).to(device, non_blocking=True).float().div_(255.0), rewards, explain)
            for row, x in odd:
                _run_rewards([row], x[None].to(device).float().div_(255.0), rewards, explain)
            done += len(chunk)
            if progress:
                progress(done, total)
    return rows


# --------------------------------------------------------------------------------------------------- ranking
def _direction(reward: Any) -> str:
    name = getattr(reward, "name", "")
    try:
        from rewardtune.registry import get_card

        return get_card(name).direction if name else "higher"
    except Exception:  # noqa: BLE001 - a reward built outside the registry
        return "higher"


def rank_rows(rows: Sequence[Row], rewards: Mapping[str, Any]) -> list[Row]:
    """Order rows best first by the first reward (respecting its card's direction), set `rank` (1 = best).

    Files without a finite score for the first reward come last, unranked, in input order.
    """
    if not rewards:
        return list(rows)
    first = next(iter(rewards))
    sign = -1.0 if _direction(rewards[first]) == "lower" else 1.0
    scored = [r for r in rows if math.isfinite(r.scores.get(first, math.nan))]
    rest = [r for r in rows if not math.isfinite(r.scores.get(first, math.nan))]
    scored.sort(key=lambda r: (-sign * r.scores[first], r.index))
    for i, r in enumerate(scored, 1):
        r.rank = i
    for r in rest:
        r.rank = None
    return scored + rest


def parse_min_scores(values: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """`--min-score 0.5` (first reward) or `--min-score clip=21` -> {label: threshold}."""
    out: dict[str, float] = {}
    for v in values:
        label, sep, num = v.rpartition("=")
        if not sep:
            if not labels:
                raise UsageError("--min-score needs a reward.")
            label = labels[0]
        if label not in labels:
            from rewardtune.registry import did_you_mean

            guess = did_you_mean(label, list(labels))
            raise UsageError(f"--min-score {v}: '{label}' is not one of the rewards scored ({', '.join(labels)})."
                             + (f" Did you mean '{guess}'?" if guess else ""))
        try:
            out[label] = float(num)
        except ValueError:
            raise UsageError(f"--min-score {v}: '{num}' is not a number.") from None
    return out


def apply_min_scores(rows: Sequence[Row], thresholds: Mapping[str, float]) -> None:
    """Mark rows whose score is below any threshold (a file that failed is never 'below')."""
    for r in rows:
        r.below_min = r.ok and any(r.scores.get(k, math.inf) < t for k, t in thresholds.items())


# ---------------------------------------------------------------------------------------------------- output
def rows_to_json(rows: Sequence[Row], rewards: Mapping[str, Any], *, prompt: str | None = None,
                 thresholds: Mapping[str, float] | None = None) -> str:
    choices = getattr(rewards, "choices", {})
    meta = [{"label": k, "name": choices[k].name if k in choices else getattr(r, "name", k),
             "preset": choices[k].preset if k in choices else None, "direction": _direction(r)}
            for k, r in rewards.items()]
    doc = {"rewards": meta, "prompt": prompt, "min_score": dict(thresholds or {}),
           "scored": sum(1 for r in rows if r.ok), "failed": sum(1 for r in rows if not r.ok),
           "results": [r.to_dict() for r in rows]}
    return json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n"


def rows_to_csv(rows: Sequence[Row], labels: Sequence[str]) -> str:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "path", "prompt", *labels, "below_min", "error"])
    for r in rows:
        w.writerow([r.rank if r.rank is not None else "", str(r.path), r.prompt or "",
                    *[(repr(r.scores[k]) if k in r.scores else "") for k in labels],
                    "true" if r.below_min else "false", r.error or ""])
    return buf.getvalue()
