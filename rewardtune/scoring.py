"""Scoring image files with one or more rewards: the engine behind `rewardtune score`, usable from Python.

    from rewardtune.scoring import load_rewards, score_files
    rewards = load_rewards(["imagereward", "clip:vit-b-32"])
    rows = score_files(["imgs/", "more.png"], rewards, prompt="a red bicycle")
    for row in rank_rows(rows, rewards):
        print(row.rank, row.path, row.scores)

How files are scored:
- Folders are searched with `rewardtune.images.discover`: symbolic links inside them are not followed unless
  `follow_symlinks` (they are listed in the result's `skipped_links`), and a folder that cannot be listed gets an
  error row.
- Headers are read first (`rewardtune.images.inspect_image`): unusable files (missing, empty, not an image,
  oversized, more elongated than MAX_ASPECT) get an error row and are never decoded.
- Large images are downscaled while they are decoded, to what the rewards can use (`decode_short_side`): the
  rewards resize every image to their input size anyway (224 px for most), so decoding 8000 x 8000 pixels to
  float only to shrink them there cost gigabytes. Images whose shorter side is at most 1024 px (2048 when a
  reward does not declare its input size) are decoded exactly as stored.
- The files are grouped by decoded size and scored in batches of at most `batch_size` images and
  `BATCH_PIXELS` pixels. Each image is decoded once and the same pixels go to every reward. Same-size batching
  leaves every score equal to scoring that image alone (only floating-point summation order differs); images are
  never resized to fit a batch.
- A file that fails to decode (corrupt or truncated data) gets its own error row; the rest of its batch is still
  scored. If a reward raises on a batch, the batch is retried image by image so only the offending file fails.
- Files are decoded to uint8 in a few threads, one batch ahead of the rewards (and at most `DECODE_PIXELS` full
  size pixels at once), and converted to float on the rewards' device. Peak memory stays near 1 GB above the
  models' own whatever the files (measured: tests/cli/test_score_memory.py).
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

from rewardtune.errors import UnknownRewardError, UsageError
from rewardtune.images import (
    DEFAULT_MAX_PIXELS,
    Discovery,
    ImageFileError,
    decode_size,
    discover,
    inspect_image,
    load_uint8,
)

#: at most this many pixels (after decode-time downscaling) in one batch: 16 MP is 200 MB as float32
BATCH_PIXELS = 16 * 1024 * 1024
#: at most this many full-size (header) pixels decoded at once across the decoding threads; one image larger than
#: this is decoded alone
DECODE_PIXELS = 64 * 1024 * 1024
#: images with more pixels than this are decoded by a single thread of their own (see score_files)
LARGE_IMAGE_PIXELS = 2048 * 2048
#: decode-time downscaling: the shorter side is kept at >= this many times the largest reward input size ...
DECODE_FACTOR = 4
#: ... and never below this; rewards that do not declare an input size (`image_size`) get UNKNOWN_SHORT_SIDE
MIN_SHORT_SIDE = 1024
UNKNOWN_SHORT_SIDE = 2048
#: images more elongated than this get an error row: rewards scale the shorter side up to their input size, so a
#: 30000 x 1 image would become 224 x 6.7 million pixels (80 GB as float) inside a CLIP-family reward
MAX_ASPECT = 32
#: the error of a file scored without a prompt (a caller may add how to give one)
NO_PROMPT = "no prompt for this file: give a prompt for every file, or this file's own prompt"


class ArgumentError(UsageError):
    """A bad argument value. `param` is the argument's name (e.g. "weights"), `value` what was given and `detail`
    what is wrong and how to fix it, so a caller (the CLI) can name its own option instead."""

    def __init__(self, param: str, value: Any, detail: str):
        self.param, self.value, self.detail = param, value, detail
        super().__init__(f"{param}={value!r}: {detail}" if value is not None else f"{param}: {detail}")


# ------------------------------------------------------------------------------------------ reward selection
@dataclass(frozen=True)
class RewardChoice:
    """One reward to score with: registry name, preset (None = the card's default) and the column label."""

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
        raise ArgumentError("reward", arg, "the name is empty; give a registered name such as 'imagereward', "
                                           "or NAME:PRESET such as 'clip:tiny'")
    name, preset = arg, None
    head, sep, tail = arg.rpartition(":")
    if sep and head in registry().names():
        name, preset = head, tail or None
    if preset is None and tiny:
        preset = "tiny"
    return RewardChoice(name=name, preset=preset, label=arg)


def parse_weights_args(args: Sequence[str], labels: Sequence[str],
                       keys: Mapping[str, Sequence[str]] | None = None) -> dict[str, dict[str, str]]:
    """`LABEL=PATH` or `LABEL.KEY=PATH` items (or a bare PATH when one reward is scored) -> {label: {key: hub id or
    directory}}. KEY is `weights` (the reward's own checkpoint, the default) or one of its secondary weights
    (`keys[label]`, e.g. pickscore's `processor`, imagereward's `tokenizer`)."""
    out: dict[str, dict[str, str]] = {}
    keys = keys or {}
    for a in args:
        label, sep, path = a.partition("=")
        key = "weights"
        if not sep:
            if len(labels) != 1:
                raise ArgumentError("weights", a, f"say which reward these weights are for, as REWARD=PATH "
                                                  f"(e.g. {labels[0]}={a})")
            label, path = labels[0], a
        if label not in labels and "." in label and label.rsplit(".", 1)[0] in labels:
            label, key = label.rsplit(".", 1)
            allowed = [k for k in keys.get(label, ()) if not k.endswith("revision")]
            if key not in ("weights", *allowed):
                raise ArgumentError("weights", a, f"{label} has no weights key '{key}'; its keys: "
                                                  f"{', '.join(['weights', *allowed])}")
        if label not in labels:
            raise ArgumentError("weights", a, f"'{label}' is not a reward being scored ({', '.join(labels)})")
        if not path:
            raise ArgumentError("weights", a, "give a directory or hub id after '='")
        if key in out.get(label, {}):
            what = f"{label}.{key}" if key != "weights" else label
            raise ArgumentError("weights", a, f"weights for {what} are given twice; give them once")
        out.setdefault(label, {})[key] = path
    return out


def load_rewards(args: Sequence[str | RewardChoice], *, tiny: bool = False, device: str = "cpu",
                 dtype: str = "float32", batch_size: int | None = None,
                 weights: Mapping[str, str | Mapping[str, str]] | None = None) -> RewardSet:
    """Build the rewards of `args` (names or `name:preset`) and load their weights now, so that missing weights
    fail before any image is read. `weights` maps a label to a hub id or local directory that replaces its
    preset's weights, or to {key: hub id or directory} for its own (`weights`) and secondary weights
    (`processor`, `tokenizer`, `clip_weights`, ...). Returns {label: Reward} in argument order."""
    from rewardtune.registry import load_reward

    choices = [a if isinstance(a, RewardChoice) else parse_reward_arg(a, tiny=tiny) for a in args]
    labels = [c.label for c in choices]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ArgumentError("reward", dup[0], "given twice; give each reward once (labels must differ)")
    from rewardtune.rewards._shared import sharing

    out = RewardSet()
    with sharing():  # rewards that need the same frozen tower get one copy
        for c in choices:
            given = (weights or {}).get(c.label)
            kw = dict(given) if isinstance(given, Mapping) else ({"weights": given} if given else {})
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
        raise ArgumentError("device", device, "unknown device: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ArgumentError("device", device, "CUDA is not available in this torch build or on this machine; "
                                              "use cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ArgumentError("device", device, f"this machine has {torch.cuda.device_count()} CUDA device(s), "
                                              f"numbered from 0")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) is not None
                                  and torch.backends.mps.is_available()):
        raise ArgumentError("device", device, "MPS is not available on this machine; use cpu (or auto)")
    return device


def needs_prompt(reward: Any) -> bool:
    """Whether a reward reads the prompt: its card's `inputs` (rewards registered as plain callables carry
    them only there), else the reward's own `inputs`."""
    from rewardtune.registry import get_card

    try:
        inputs = get_card(reward.name).inputs
    except (UnknownRewardError, AttributeError):  # a reward built outside the registry, or without a name
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

    def bad(detail: str) -> ArgumentError:
        return ArgumentError("prompts_file", str(src), detail)

    if not src.is_file():
        raise bad("no such file" if not src.exists() else "not a file")
    base = src.parent
    entries: list[tuple[str, str, str]] = []  # (path, prompt, where: "line 3" / "entry 3")
    try:
        text = src.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise bad(f"not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise bad(f"cannot read it ({e.strerror or e})") from None
    is_json = src.suffix.lower() in (".jsonl", ".ndjson", ".json") or text.lstrip().startswith(("{", "["))
    if is_json:
        if text.lstrip().startswith("["):  # a JSON array of objects
            try:
                items = json.loads(text)
            except json.JSONDecodeError as e:
                raise bad(f"line {e.lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise bad("JSON nested too deeply") from None
            if not isinstance(items, list):
                raise bad("expected a JSON array of objects with 'path' and 'prompt'")
            items = [(f"entry {i + 1}", o) for i, o in enumerate(items)]
        else:
            items = []
            for n, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    items.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise bad(f"line {n}: not valid JSON ({e.msg})") from None
                except RecursionError:
                    raise bad(f"line {n}: JSON nested too deeply") from None
        for n, obj in items:
            if not isinstance(obj, dict):
                raise bad(f"{n}: expected an object with 'path' and 'prompt'")
            p = obj.get("path", obj.get("image", obj.get("file")))
            t = obj.get("prompt", obj.get("text"))
            if not isinstance(p, str) or not isinstance(t, str):
                raise bad(f"{n}: needs string fields 'path' and 'prompt', got keys {sorted(obj)}")
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
                raise bad(f"line {n}: expected 'path,prompt', got {row!r}")
            entries.append((row[pi].strip(), row[ti], f"line {n}"))
    out: dict[Path, str] = {}
    keys: dict[str, tuple[str, str]] = {}
    for p, t, n in entries:
        if not p:
            raise bad(f"{n}: empty path")
        full = Path(os.path.expanduser(p))
        if not full.is_absolute():
            full = base / full
        k = _key(full)
        if k in keys and keys[k][0] != t:
            raise bad(f"{n}: '{p}' already has a different prompt ({keys[k][1]}); give each file one prompt")
        keys[k] = (t, n)
        out.setdefault(full, t)
    if not out:
        raise bad("no entries: list one image per line as path,prompt")
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


class Rows(list):
    """The rows of `score_files`, one per file in discovery order, plus `skipped_links`: the symbolic links found
    inside the folders and not followed (see `rewardtune.images.discover`)."""

    def __init__(self, rows: Iterable[Row] = (), skipped_links: Sequence[Path] = ()) -> None:
        super().__init__(rows)
        self.skipped_links = list(skipped_links)


def decode_short_side(rewards: Mapping[str, Any]) -> int:
    """How far `score_files` downscales large images while decoding them: the shorter side is kept at
    DECODE_FACTOR times the largest input size the rewards declare (`image_size`: 224 for CLIP-family rewards,
    ImageReward, BLIP-2), and at least MIN_SHORT_SIDE; UNKNOWN_SHORT_SIDE when a reward declares none (plain
    callables, sam-llm's region crops). Every reward resizes its input to its own size with an antialiased filter,
    so what it sees changes by far less than 8-bit rounding (docs/scoring.md has the measured numbers)."""
    sizes = [getattr(r, "image_size", None) for r in rewards.values()]
    if not sizes or not all(isinstance(v, int) and v > 0 for v in sizes):
        return UNKNOWN_SHORT_SIDE
    return max(MIN_SHORT_SIDE, DECODE_FACTOR * max(sizes))


@dataclass(frozen=True)
class _Failed:
    message: str


class _PixelBudget:
    """A counting gate on pixels being decoded: waits until `n` more fit under `limit` (or nothing else is in)."""

    def __init__(self, limit: int) -> None:
        import threading

        self.limit, self.used, self.cond = limit, 0, threading.Condition()

    def acquire(self, n: int) -> None:
        with self.cond:
            while self.used and self.used + n > self.limit:
                self.cond.wait()
            self.used += n

    def release(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


def score_files(paths: Iterable[str | Path] | Discovery, rewards: Mapping[str, Any], *, prompt: str | None = None,
                prompts: Mapping[str | Path, str] | None = None, batch_size: int = 16, explain: bool = False,
                max_pixels: int = DEFAULT_MAX_PIXELS, exif_transpose: bool = True,
                progress: Callable[[int, int], None] | None = None, decode_workers: int | None = None,
                follow_symlinks: bool = False, max_short_side: int | None | str = "auto") -> Rows:
    """Score every image under `paths` (files or folders, recursively; or what `discover` already found) with
    every reward in `rewards`.

    The prompt of a file comes from `prompts` (path -> prompt) and falls back to `prompt`. Returns one Row per
    file in discovery order (use `rank_rows` to order them); a file that could not be scored has `error` set, and
    so has a row for each folder that could not be listed. Symbolic links inside folders are followed only with
    `follow_symlinks`; the others are in the result's `skipped_links`. `progress(done, total)` is called after each
    batch. Files are decoded by `decode_workers` threads (default: up to 8, one batch ahead of the rewards).
    `max_short_side`: "auto" downscales large images at decode time as far as the rewards allow
    (`decode_short_side`), an int sets the shorter side, None decodes every image at full size.
    """
    import torch

    if batch_size < 1:
        raise ArgumentError("batch_size", batch_size, "must be at least 1")
    if not rewards:
        raise ArgumentError("rewards", None, "no reward given: pass at least one")
    if max_short_side == "auto":
        max_short_side = decode_short_side(rewards)
    elif max_short_side is not None and (not isinstance(max_short_side, int) or max_short_side < 1):
        raise ArgumentError("max_short_side", max_short_side, "use 'auto', None, or a positive number of pixels")
    found = paths if isinstance(paths, Discovery) else discover(paths, follow_symlinks=follow_symlinks)
    by_key = {_key(p): t for p, t in (prompts or {}).items()}
    wants_prompt = any(needs_prompt(r) for r in rewards.values())
    rows = Rows(skipped_links=found.skipped_links)
    groups: dict[tuple[int, int], list[Row]] = {}  # by decoded size
    header_pixels: dict[int, int] = {}
    decoded: dict[int, tuple[int, int]] = {}
    for i, f in enumerate(found.files):
        row = Row(index=i, path=f, prompt=by_key.get(_key(f), prompt))
        rows.append(row)
        if wants_prompt and row.prompt is None:
            row.error = NO_PROMPT
            continue
        try:
            info = inspect_image(f, max_pixels=max_pixels, exif_transpose=exif_transpose)
        except ImageFileError as e:
            row.error = str(e)
            continue
        row.size = info.size
        w, h = info.size
        if max(w, h) > MAX_ASPECT * min(w, h):
            row.error = (f"aspect ratio {max(w, h) / min(w, h):.0f}:1 is beyond {MAX_ASPECT}:1: rewards scale the "
                         "shorter side up to their input size, which would take gigabytes here; crop the image")
            continue
        header_pixels[row.index] = w * h
        decoded[row.index] = decode_size(info.size, max_short_side)
        groups.setdefault(decoded[row.index], []).append(row)
    for folder, why in found.unreadable:
        rows.append(Row(index=len(rows), path=folder, prompt=None,
                        error=f"cannot list this folder ({why}); the images in it were not scored"))

    total, done = len(rows), sum(1 for r in rows if r.error)
    if progress:
        progress(done, total)
    chunks = []
    for (w, h), g in groups.items():  # at most batch_size images and BATCH_PIXELS pixels (one image at least)
        n = max(1, min(batch_size, BATCH_PIXELS // max(1, w * h)))
        chunks += [g[i:i + n] for i in range(0, len(g), n)]
    if not chunks:
        return rows
    device = getattr(next(iter(rewards.values())), "device", "cpu")
    budget = _PixelBudget(DECODE_PIXELS)

    def decode(row: Row):
        n = header_pixels[row.index]
        budget.acquire(n)
        try:
            return load_uint8(row.path, max_pixels=max_pixels, exif_transpose=exif_transpose,
                              max_short_side=max_short_side)
        except ImageFileError as e:
            return _Failed(str(e))  # the message only: the exception's traceback would keep decoder frames alive
        finally:
            budget.release(n)

    # Decoding runs in threads (PIL releases the GIL) one batch ahead of the rewards, so reading files overlaps
    # with the forward passes; at most two batches of uint8 pixels are in memory. Large images are decoded by one
    # thread of their own: malloc keeps an arena per thread, and each arena kept the high-water mark of the large
    # images it had decoded (eight threads held 1.5 GB where one held 0.8).
    workers = max(1, min(batch_size, decode_workers or min(8, os.cpu_count() or 1)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rewardtune-decode") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="rewardtune-decode-large") as large:

        def submit(row: Row):
            return (large if header_pixels[row.index] > LARGE_IMAGE_PIXELS else pool).submit(decode, row)

        pending = [submit(r) for r in chunks[0]]
        for ci, chunk in enumerate(chunks):
            results = [f.result() for f in pending]
            pending = [submit(r) for r in chunks[ci + 1]] if ci + 1 < len(chunks) else []
            ok, pix, odd = [], [], []
            for row, x in zip(chunk, results, strict=True):
                if isinstance(x, _Failed):
                    row.error = x.message
                elif tuple(x.shape[-2:]) != decoded[row.index][::-1]:
                    # orientation only known after decoding (PNG with a late eXIf chunk): score it on its own
                    got = (int(x.shape[-1]), int(x.shape[-2]))
                    row.size = (row.size[1], row.size[0]) if got == decoded[row.index][::-1] else got
                    odd.append((row, x))
                else:
                    ok.append(row)
                    pix.append(x)
            del results
            # uint8 -> float on the reward's device: identical values to load_pixels, a quarter of the copy
            if ok:
                batch = torch.stack(pix)
                del pix
                _run_rewards(ok, batch.to(device, non_blocking=True).float().div_(255.0), rewards, explain)
                del batch
            for row, x in odd:
                _run_rewards([row], x[None].to(device).float().div_(255.0), rewards, explain)
            done += len(chunk)
            if progress:
                progress(done, total)
    return rows


# --------------------------------------------------------------------------------------------------- ranking
def _direction(reward: Any) -> str:
    name = getattr(reward, "name", "")
    from rewardtune.registry import get_card

    try:
        return get_card(name).direction if name else "higher"
    except UnknownRewardError:  # a reward built outside the registry
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
    """Thresholds `0.5` (for the first reward) or `clip=21` -> {label: threshold}."""
    out: dict[str, float] = {}
    for v in values:
        label, sep, num = v.rpartition("=")
        if not sep:
            if not labels:
                raise ArgumentError("min_score", v, "a threshold needs a reward to apply to")
            label = labels[0]
        if label not in labels:
            from rewardtune.registry import did_you_mean

            guess = did_you_mean(label, list(labels))
            raise ArgumentError("min_score", v, f"'{label}' is not one of the rewards scored ({', '.join(labels)})."
                                + (f" Did you mean '{guess}'?" if guess else ""))
        try:
            out[label] = float(num)
        except ValueError:
            raise ArgumentError("min_score", v, f"'{num}' is not a number") from None
        if not math.isfinite(out[label]):
            raise ArgumentError("min_score", v, "the threshold must be a finite number")
    return out


def apply_min_scores(rows: Sequence[Row], thresholds: Mapping[str, float]) -> None:
    """Mark rows whose score is below any threshold (a file that failed is never 'below')."""
    for r in rows:
        r.below_min = r.ok and any(r.scores.get(k, math.inf) < t for k, t in thresholds.items())


# ---------------------------------------------------------------------------------------------------- output
def rows_to_json(rows: Sequence[Row], rewards: Mapping[str, Any], *, prompt: str | None = None,
                 thresholds: Mapping[str, float] | None = None,
                 skipped_links: Sequence[Path] | None = None) -> str:
    """The JSON document of a scoring: rewards, counts, and one result per row. `skipped_links` defaults to the
    rows' own (a `Rows` from `score_files`)."""
    if skipped_links is None:
        skipped_links = getattr(rows, "skipped_links", [])
    choices = getattr(rewards, "choices", {})
    meta = [{"label": k, "name": choices[k].name if k in choices else getattr(r, "name", k),
             "preset": choices[k].preset if k in choices else None, "direction": _direction(r)}
            for k, r in rewards.items()]
    doc = {"rewards": meta, "prompt": prompt, "min_score": dict(thresholds or {}),
           "scored": sum(1 for r in rows if r.ok), "failed": sum(1 for r in rows if not r.ok),
           "skipped_links": [str(p) for p in skipped_links], "results": [r.to_dict() for r in rows]}
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
