"""Adapter that gives a plain callable the reward contract (used by `@register_reward`)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rewardtune.rewards.base import Reward


class CallableReward(Reward):
    def __init__(self, fn: Callable[..., torch.Tensor], *, name: str, differentiable: bool = True,
                 device: str = "cpu", dtype: str = "float32", max_batch_size: int = 64, **kwargs: Any):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.fn, self.kwargs = fn, kwargs
        self.name = name
        self.differentiable = differentiable  # instance attribute shadows the class default

    def _load(self) -> list[torch.nn.Module]:
        if isinstance(self.fn, torch.nn.Module):  # a module registered as a reward: move it where pixels go
            return [self.fn.to(self.device)]
        return []

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        out = self.fn(pixels, prompts, **self.kwargs)
        out = torch.as_tensor(out, device=pixels.device)
        if out.shape != (pixels.shape[0],):
            raise ValueError(f"reward '{self.name}' returned shape {tuple(out.shape)}, expected ({pixels.shape[0]},)")
        return out
