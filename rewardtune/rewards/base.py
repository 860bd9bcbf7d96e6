"""The reward contract every registered reward follows.

A reward maps float pixels `[B, 3, H, W]` in [0, 1] (any device, any float dtype) and B prompts to a float32
tensor `[B]`, higher is better. Differentiable rewards keep the autograd graph back to the pixels. Weights load
lazily, once, frozen and in eval mode; large batches are split by `max_batch_size`.

Subclasses implement `_load()` (build the models, return the modules to freeze) and `_forward(pixels, prompts)`
on one chunk. Everything else (device moves, batch splitting, dtype, `score`/`rank` on files) lives here.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

ImageLike = Any  # PIL.Image.Image | str | Path | torch.Tensor


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"Unknown dtype '{dtype}'. Use one of: float32, float16, bfloat16.")
    return table[dtype]


class Reward:
    """Base class of rewards. See the module docstring for the contract."""

    name: ClassVar[str] = ""
    differentiable: ClassVar[bool] = True
    #: what the reward reads: "pixels" and/or "prompt"
    inputs: ClassVar[tuple[str, ...]] = ("pixels", "prompt")

    def __init__(self, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 max_batch_size: int = 32):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.max_batch_size = int(max_batch_size)
        self._modules: list[torch.nn.Module] | None = None
        self.load_count = 0  # how many times weights were actually loaded (must stay <= 1)

    # -- to implement -------------------------------------------------------------------------------------
    def _load(self) -> list[torch.nn.Module]:
        """Build/load the models onto `self.device` in `self.dtype`; return the modules to freeze."""
        raise NotImplementedError

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Score one chunk: pixels [b,3,H,W] float32 in [0,1] on self.device -> [b]."""
        raise NotImplementedError

    # -- provided ------------------------------------------------------------------------------------------
    @property
    def loaded(self) -> bool:
        return self._modules is not None

    def load(self) -> Reward:
        """Load weights once (idempotent); they are frozen and in eval mode."""
        if self._modules is None:
            modules = list(self._load())
            for m in modules:
                m.eval()
                m.requires_grad_(False)
            self._modules = modules
            self.load_count += 1
        return self

    def modules(self) -> list[torch.nn.Module]:
        """The frozen modules of this reward (loads them if needed)."""
        self.load()
        assert self._modules is not None
        return list(self._modules)

    def to(self, device: str | torch.device) -> Reward:
        self.device = torch.device(device)
        if self._modules is not None:
            for m in self._modules:
                m.to(self.device)
        return self

    def _check_inputs(self, pixels: torch.Tensor, prompts: str | Sequence[str]) -> list[str]:
        """Validate shapes; one prompt string applies to every image."""
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"{self.name or type(self).__name__}: expected pixels [B,3,H,W], got {tuple(pixels.shape)}")
        if isinstance(prompts, str):
            prompts = [prompts] * pixels.shape[0]
        prompts = list(prompts)
        if len(prompts) != pixels.shape[0]:
            raise ValueError(f"{self.name}: {pixels.shape[0]} images but {len(prompts)} prompts")
        return prompts

    def __call__(self, pixels: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        prompts = self._check_inputs(pixels, prompts)
        self.load()
        x = pixels.to(self.device, torch.float32)
        if not self.differentiable:
            x = x.detach()
        outs = []
        for i in range(0, x.shape[0], self.max_batch_size):
            chunk = self._forward(x[i:i + self.max_batch_size], prompts[i:i + self.max_batch_size])
            outs.append(chunk.reshape(-1).float())
        return torch.cat(outs) if outs else torch.zeros(0, device=self.device)

    def _explain(self, pixels: torch.Tensor, prompts: list[str]) -> list[dict[str, Any]] | None:
        """Per-image details of one chunk (same inputs as `_forward`); None when there is nothing to explain."""
        return None

    @torch.no_grad()
    def explain(self, pixels: torch.Tensor, prompts: str | Sequence[str]) -> list[dict[str, Any]] | None:
        """Optional per-image details (captions, regions...), JSON-serialisable; None when a reward has nothing to
        explain. Chunked by `max_batch_size` like scoring."""
        prompts = self._check_inputs(pixels, prompts)
        self.load()
        x = pixels.detach().to(self.device, torch.float32)
        out: list[dict[str, Any]] = []
        for i in range(0, x.shape[0], self.max_batch_size):
            chunk = self._explain(x[i:i + self.max_batch_size], prompts[i:i + self.max_batch_size])
            if chunk is None:
                return None
            out += chunk
        return out

    @torch.no_grad()
    def score(self, prompt: str | Sequence[str], images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
        """Score images (PIL images, paths, or a [B,3,H,W] / [3,H,W] tensor in [0,1]) against a prompt.

        Returns float32 [N] on the CPU. Images of different sizes are scored in same-size groups.
        """
        from rewardtune.images import to_pixel_list

        pix = to_pixel_list(images)
        prompts = [prompt] * len(pix) if isinstance(prompt, str) else list(prompt)
        if len(prompts) != len(pix):
            raise ValueError(f"{len(pix)} images but {len(prompts)} prompts")
        out = torch.empty(len(pix))
        groups: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(pix):
            groups.setdefault(tuple(p.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = torch.stack([pix[i] for i in idx])
            out[idx] = self(batch, [prompts[i] for i in idx]).float().cpu()
        return out

    def rank(self, prompt: str, images: ImageLike | Sequence[ImageLike]) -> tuple[list[int], list[float]]:
        """Ranks (1 = best) and scores of images for one prompt, in input order."""
        scores = self.score(prompt, images)
        order = torch.argsort(scores, descending=True, stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(1, len(order) + 1)
        return ranks.tolist(), scores.tolist()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, device={self.device}, dtype={self.dtype}, loaded={self.loaded})"


def as_path(p: str | Path) -> Path:
    return p if isinstance(p, Path) else Path(p)
