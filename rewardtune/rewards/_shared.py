"""Frozen models shared by rewards loaded together, so a checkpoint two rewards need is in memory once.

FineRewards' objective has the LAION aesthetic predictor and sam-llm's region labeller, and both run CLIP ViT-L/14's
image tower (about 300M parameters). Loading rewards inside `sharing()` (the engine's objective and `rewardtune
score` do) gives them one copy when the checkpoint directory, dtype and device are the same. Rewards share only
frozen modules that they never modify; rewards loaded together should be moved together (neither the engine nor
`score` moves them).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

_POOL: contextvars.ContextVar[dict[tuple, Any] | None] = contextvars.ContextVar("rewardtune_shared", default=None)


@contextlib.contextmanager
def sharing() -> Iterator[dict[tuple, Any]]:
    """Within this block, `shared()` returns the same module for the same key (nested blocks share the outer pool)."""
    pool = _POOL.get()
    if pool is not None:
        yield pool
        return
    token = _POOL.set({})
    try:
        yield _POOL.get()  # type: ignore[misc]
    finally:
        _POOL.reset(token)


def shared(kind: str, path: str | Path, dtype: torch.dtype, device: torch.device | str,
           load: Callable[[], Any]) -> Any:
    """`load()`'s module, or the one already loaded for (kind, checkpoint directory, dtype, device) in this
    `sharing()` block."""
    pool = _POOL.get()
    if pool is None:
        return load()
    key = (kind, os.path.realpath(path), str(dtype), str(torch.device(device)))
    if key not in pool:
        pool[key] = load()
    return pool[key]


def clip_image_tower(path: str | Path, dtype: torch.dtype, device: torch.device | str, *,
                     from_model: Any = None) -> Any:
    """CLIP's image tower with its projection (`CLIPVisionModelWithProjection`) from a full CLIP checkpoint or an
    image-tower one, shared within `sharing()`. `from_model`, a full `CLIPModel` already loaded from `path`, gives
    the tower its own modules instead of reading the checkpoint again when no shared tower exists yet."""

    def load() -> Any:
        from transformers import AutoConfig, CLIPVisionModelWithProjection

        from rewardtune.rewards._util import quiet_transformers

        with quiet_transformers():
            cfg = from_model.config if from_model is not None else AutoConfig.from_pretrained(str(path))
            if hasattr(cfg, "vision_config"):  # a full CLIP checkpoint: take its image tower and projection
                vcfg = cfg.vision_config
                vcfg.projection_dim = cfg.projection_dim  # older configs leave the sub-config's default (512)
            else:
                vcfg = cfg
            if from_model is not None:
                with torch.device("meta"):  # an empty shell: its two parts are the loaded model's own
                    tower = CLIPVisionModelWithProjection(vcfg)
                tower.vision_model = from_model.vision_model
                tower.visual_projection = from_model.visual_projection
            else:
                tower = CLIPVisionModelWithProjection.from_pretrained(str(path), config=vcfg, dtype=dtype)
        return tower.to(device).eval().requires_grad_(False)

    return shared("clip-image-tower", path, dtype, device, load)
