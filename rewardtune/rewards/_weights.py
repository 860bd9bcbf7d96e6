"""Resolve a preset's `weights` (hub id, local directory or `zoo:` tiny twin) to a local directory.

Real loading code stays real: hub ids go through huggingface_hub's cache, local directories are used as is,
and `zoo:NAME` builds a seeded tiny twin once, saves it with `save_pretrained`, and hands back that directory,
so the same `from_pretrained` path runs in tests and in `--tiny` mode.
"""
from __future__ import annotations

import os
from pathlib import Path

from rewardtune.errors import MissingWeightsError

#: trained models that ship inside the package (`zoo:shapes-sd1`, `zoo:shapes-clip`): real weights, no download
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "data" / "models"


def shipped_model(ref: str) -> Path | None:
    """The directory of a shipped trained model (`zoo:NAME`), or None when NAME is not one."""
    name = ref.removeprefix("zoo:")
    if not name or "/" in name or name.startswith("."):
        return None
    d = SHIPPED_MODELS / name
    return d if d.is_dir() else None


def hub_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - very old huggingface_hub
        return os.path.expanduser("~/.cache/huggingface/hub")


def resolve_weights(weights: str, revision: str | None = None, *, what: str = "model",
                    allow_patterns: list[str] | None = None, setting: str = "weights") -> Path:
    """Return a local directory holding `weights`.

    `weights` is a `zoo:` reference (a trained model shipped in the package, such as `zoo:shapes-sd1`, or a seeded
    tiny twin built on first use), a local directory, or a hub repo id. A missing hub checkpoint raises
    MissingWeightsError naming the id, the cache, and how to fetch it or point the spec at a local dir. `setting`
    is the spec key that holds these weights: `model.pretrained`, or a key of an objective term (`weights`,
    `kwargs.clip_weights`, ...), shown as `objective[N].<key>`.
    """
    if weights.startswith("zoo:"):
        shipped = shipped_model(weights)
        if shipped is not None:
            return shipped
        from rewardtune.zoo import materialize

        return materialize(weights)
    p = Path(os.path.expanduser(weights))
    if p.exists():
        if not p.is_dir():
            raise MissingWeightsError(f"{what}: weights path {p} is a file; point the preset at the directory "
                                      "that holds the checkpoint (config.json + weights).")
        return p
    if weights.startswith((".", "/", "~")) or weights.count("/") != 1:
        raise MissingWeightsError(f"{what}: local weights directory '{weights}' does not exist. Fix the path, or use "
                                  "a hub id such as 'org/name'.")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(weights, revision=revision, allow_patterns=allow_patterns))
    except Exception as e:  # hub errors, offline mode, no network: one clear message instead of a hub traceback
        rev = f" --revision {revision}" if revision else ""
        raise MissingWeightsError(
            f"{what}: weights '{weights}'{' @ ' + revision if revision else ''} are not in the local cache "
            f"({hub_cache_dir()}) and could not be downloaded ({type(e).__name__}).\n"
            f"    fix: on a machine with network access run `huggingface-cli download {weights}{rev}` "
            f"(and copy the cache here, or set HF_HOME), or download the files to a directory and use it as the "
            f"weights (in a spec: `{_spec_key(setting)}=/models/{weights.split('/')[-1]}`)."
        ) from None


def _spec_key(setting: str) -> str:
    """The override that sets these weights: `model.pretrained` as is, a term's key under `objective[N]`."""
    return setting if setting.startswith("model.") else f"objective[N].{setting}"
