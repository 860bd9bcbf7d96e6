"""Offline tiny twins: seeded random models of each family, built from configs with no downloads.

`zoo:NAME` in a preset's `weights` (or a model's `pretrained`) resolves to a local directory written by
`save_pretrained`, so the same loading code runs on tiny twins as on real checkpoints.

- `zoo:X`   -> `rewardtune.zoo.X.build(path, seed)`
- `zoo:X.Y` -> `rewardtune.zoo.X.build_Y(path, seed)` (helpers that are not builders must not be named `build*`)

Each builder writes a directory that the matching reward / engine loader reads with `from_pretrained`.
Directories are cached under `$REWARDTUNE_CACHE/zoo` (default `~/.cache/rewardtune/zoo`), keyed by name, seed,
`ZOO_VERSION` and a hash of the builder's source, and written atomically (temp dir + rename) so concurrent processes never see half a model.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path

ZOO_VERSION = 1
DEFAULT_SEED = 0


def cache_root() -> Path:
    root = os.environ.get("REWARDTUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rewardtune")
    return Path(root) / "zoo"


def _split(ref: str) -> tuple[str, str]:
    name = ref[4:] if ref.startswith("zoo:") else ref
    module, _, variant = name.partition(".")
    if not module.replace("_", "").isalnum():
        raise ValueError(f"Bad zoo reference '{ref}'")
    return module, ("build_" + variant if variant else "build")


def builder(ref: str):
    module, fn = _split(ref)
    try:
        mod = importlib.import_module(f"rewardtune.zoo.{module}")
        return getattr(mod, fn)
    except (ImportError, AttributeError):
        raise ValueError(f"Unknown tiny twin '{ref}'. Available: {', '.join(available())}") from None


def available() -> list[str]:
    here = Path(__file__).parent
    out = []
    for p in sorted(here.glob("*.py")):
        if p.stem.startswith("_") or p.stem == "tokenizers":
            continue
        text = p.read_text()
        for line in text.splitlines():
            if line.startswith("def build("):
                out.append(f"zoo:{p.stem}")
            elif line.startswith("def build_"):
                out.append(f"zoo:{p.stem}.{line[len('def build_'):].split('(')[0]}")
    return out


def _source_hash(build) -> str:
    """Hash of the builder's module and the shared tokenizer code: editing a twin rebuilds its cache entry."""
    import hashlib
    import inspect

    h = hashlib.sha256()
    for mod in (inspect.getmodule(build), importlib.import_module("rewardtune.zoo.tokenizers")):
        h.update(Path(inspect.getfile(mod)).read_bytes())
    return h.hexdigest()[:10]


def materialize(ref: str, seed: int = DEFAULT_SEED) -> Path:
    """Build the tiny twin `ref` once and return its directory (cached, atomic)."""
    build = builder(ref)
    name = ref[4:] if ref.startswith("zoo:") else ref
    target = cache_root() / f"{name}-s{seed}-v{ZOO_VERSION}-{_source_hash(build)}"
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            build(tmp, seed)
        (tmp / ".complete").write_text(ref)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race; theirs is complete
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
