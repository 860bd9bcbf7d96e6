"""Checks a valid spec must also pass on this machine before a run starts: its prompt files read and are not empty,
its local weights directories exist, the extras it asks for are installed, its device is there.

`rewardtune validate` and the run path (`build_trainer`, before any model is built) both call `preflight`, so
validation reports what a run would reject seconds later. Bad paths are exit 2, missing extras exit 4; every
problem is reported at once. No torch import, except to look for a device other than cpu/auto.
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardtune.errors import Problem, SpecError
from rewardtune.rewards._weights import WEIGHT_KEYS
from rewardtune.spec.load import spec_problem

BAD_INPUT, MISSING_EXTRA = 2, 4


@dataclass(frozen=True)
class Finding:
    problem: Problem
    exit_code: int  # BAD_INPUT or MISSING_EXTRA


class PreflightError(SpecError):
    """Every preflight problem at once; exit 2 when any is bad input, else 4 (only extras are missing)."""

    def __init__(self, findings: list[Finding], source: str | None = None):
        super().__init__([f.problem for f in findings], source)
        self.findings = list(findings)
        self.exit_code = BAD_INPUT if any(f.exit_code == BAD_INPUT for f in findings) else MISSING_EXTRA


def preflight(spec: Any) -> None:
    """Raise PreflightError listing every problem `preflight_findings` finds."""
    from rewardtune.spec.load import spec_origin

    findings = preflight_findings(spec)
    if findings:
        findings.sort(key=lambda f: (f.problem.line or 10**9, f.problem.path))  # the order `validate` uses
        raise PreflightError(findings, spec_origin(spec))


def preflight_findings(spec: Any) -> list[Finding]:
    out: list[Finding] = []
    out += _prompt_findings(spec)
    out += _weights_findings(spec)
    out += _extra_findings(spec)
    device = _device_finding(spec, getattr(spec.launcher, "device", "auto"))
    if device is not None:
        out.append(device)
    return out


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


# ---------------------------------------------------------------------------------------------------- prompts
def _prompt_findings(spec: Any) -> list[Finding]:
    import json

    from rewardtune.prompts import resolve_prompts
    from rewardtune.spec.load import spec_base_dir

    out = []
    for which in ("train", "eval"):
        source = getattr(spec.prompts, which)
        if source.inline is not None:
            continue  # checked by the schema
        key = "file" if source.file is not None else "builtin"
        what = f"prompts file '{source.file}'" if source.file is not None else f"built-in prompt set '{source.builtin}'"
        try:
            resolve_prompts(source, spec_base_dir(spec))
            continue
        except FileNotFoundError:
            msg, fix = "not found", "fix the path (relative to the spec file)"
        except IsADirectoryError:
            msg, fix = "is a directory", "give a .txt or .jsonl file"
        except UnicodeDecodeError:
            msg, fix = "is not UTF-8 text", "save it as UTF-8"
        except json.JSONDecodeError as e:
            msg = f"is malformed: {_jsonl_line(source.file, spec_base_dir(spec), e.doc)}is not JSON ({e.msg})"
            fix = "each line of a .jsonl file is a JSON object with a string 'prompt'"
        except ValueError as e:  # an empty set, a JSONL line without a string 'prompt'
            msg = "has no prompts" if str(e) == "prompt set is empty" else f"is malformed: {e}"
            fix = ("one prompt per line (.txt; blank lines and # comments are skipped), or one {\"prompt\": ...} "
                   "object per line (.jsonl)")
        except OSError as e:
            msg, fix = f"cannot be read ({e.strerror or e})", "check the file and its permissions"
        out.append(Finding(spec_problem(spec, ("prompts", which, key), f"{what} {msg}", fix), BAD_INPUT))
    return out


def _jsonl_line(file: str, base: Path, doc: str) -> str:
    """'line N ' of the first line of `file` that reads `doc` (json reports positions within the line only)."""
    p = Path(file) if Path(file).is_absolute() else base / file
    try:
        return f"line {p.read_text(encoding='utf-8').splitlines().index(doc) + 1} "
    except (OSError, UnicodeDecodeError, ValueError):
        return ""


# ---------------------------------------------------------------------------------------------------- weights
def _looks_local(weights: str) -> bool:
    """The rule of `rewardtune.rewards._weights.resolve_weights`: a path, not a hub id (`org/name`) or `zoo:`."""
    return not weights.startswith("zoo:") and (weights.startswith((".", "/", "~")) or weights.count("/") != 1)


def _local_weights_problem(spec: Any, weights: str, setting: tuple[str | int, ...],
                           pipeline: bool = False) -> Problem | None:
    p = Path(os.path.expanduser(weights))
    if not _looks_local(weights) and not p.exists():
        return None  # a hub id: downloaded (or found in the cache) when the run loads it
    if not p.exists():
        where = f" (looked at {p.absolute()})" if str(p.absolute()) != weights else ""
        return spec_problem(spec, setting, f"local weights directory '{weights}' does not exist{where}",
                            "fix the path, or use a hub id such as 'org/name'")
    if not p.is_dir():
        return spec_problem(spec, setting, f"weights path '{weights}' is a file",
                            "give the directory that holds the checkpoint (config files + weights)")
    if pipeline and not (p / "model_index.json").is_file():
        return spec_problem(spec, setting, f"'{weights}' is not a diffusers pipeline directory (no model_index.json)",
                            "give a directory written by `pipeline.save_pretrained`, or a hub id")
    return None


def _weights_findings(spec: Any) -> list[Finding]:
    problems = [_local_weights_problem(spec, spec.model.pretrained, ("model", "pretrained"), pipeline=True)]
    for i, t in enumerate(spec.objective):
        if t.weights:
            problems.append(_local_weights_problem(spec, t.weights, ("objective", i, "weights")))
        for k, v in t.kwargs.items():  # e.g. sam-llm's clip_weights / llm_weights, pickscore's processor
            if isinstance(v, str) and (k in WEIGHT_KEYS or k.endswith("_weights")) and not v.startswith("pkg:"):
                problems.append(_local_weights_problem(spec, v, ("objective", i, "kwargs", k)))
    return [Finding(p, BAD_INPUT) for p in problems if p is not None]


# ----------------------------------------------------------------------------------------------------- extras
def _extra(spec: Any, setting: tuple[str | int, ...], package: str, extra: str | None,
           fix_off: str | None) -> Finding:
    install = f"pip install 'rewardtune[{extra}]'" if extra else f"pip install {package}"
    return Finding(spec_problem(spec, setting, f"needs the package '{package}', which is not installed",
                                f"install it with: {install}" + (f"; or {fix_off}" if fix_off else "")),
                   MISSING_EXTRA)


def _extra_findings(spec: Any) -> list[Finding]:
    out = []
    if spec.logging.tensorboard and _missing("tensorboard"):
        out.append(_extra(spec, ("logging", "tensorboard"), "tensorboard", "tensorboard",
                          "set logging.tensorboard: false"))
    for i, tracker in enumerate(spec.logging.trackers):
        if _missing(tracker) and not (tracker == "tensorboard" and spec.logging.tensorboard):
            out.append(_extra(spec, ("logging", "trackers", i), tracker, tracker,
                              f"remove {tracker} from logging.trackers"))
    if spec.train.optimizer == "adamw8bit" and _missing("bitsandbytes"):
        out.append(_extra(spec, ("train", "optimizer"), "bitsandbytes", "bnb", "use train.optimizer: adamw"))
    from rewardtune.errors import UnknownRewardError
    from rewardtune.registry import get_card

    for i, t in enumerate(spec.objective):
        try:
            card = get_card(t.reward)
        except UnknownRewardError:  # left unresolved by a validation without imports
            continue
        for req in card.missing_requirements():
            out.append(_extra(spec, ("objective", i, "reward"), req["package"], req.get("extra"), None))
    return out


# ----------------------------------------------------------------------------------------------------- device
_DEVICE = re.compile(r"(cpu|cuda|mps)(?::(\d+))?")


def _device_finding(spec: Any, device: str) -> Finding | None:
    """A problem when `launcher.device` names a device this machine lacks. torch is imported only here, and only
    for a device other than auto/cpu."""
    if device in ("auto", "cpu"):
        return None
    m = _DEVICE.fullmatch(device)
    if m is None:
        return Finding(spec_problem(spec, ("launcher", "device"), f"'{device}' is not a device",
                                    "use auto, cpu, cuda, cuda:N or mps"), BAD_INPUT)
    kind, index = m.group(1), m.group(2)
    if kind == "cpu":
        return None
    import torch

    if kind == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            msg = "this machine has no CUDA device" + ("" if torch.version.cuda else " (torch is a CPU-only build)")
        elif index is not None and int(index) >= n:
            msg = f"this machine has {n} CUDA device{'s' if n != 1 else ''} (cuda:0..cuda:{n - 1})"
        else:
            return None
    else:
        if torch.backends.mps.is_available() and index in (None, "0"):
            return None
        msg = "this machine has no MPS device"
    return Finding(spec_problem(spec, ("launcher", "device"), f"'{device}': {msg}",
                                "use launcher.device: auto (a GPU when there is one) or cpu"), BAD_INPUT)
