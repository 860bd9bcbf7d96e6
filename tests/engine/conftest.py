"""Tiny offline setup for engine tests: the zoo's SD-1.x twin and small rewards registered as plain callables."""
from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from rewardtune.registry import register_reward


@register_reward("test-brightness", differentiable=True)
def brightness(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean pixel value: a smooth, easily learnable differentiable reward."""
    return pixels.mean(dim=(1, 2, 3))


class ConvScorer(torch.nn.Module):
    """A fixed random conv net scoring pixels (seeded, so every test sees the same reward)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, pixels, prompts):
        h = torch.tanh(self.conv(pixels * 2 - 1)).mean(dim=(2, 3))
        return self.head(h).squeeze(-1)


_CONV = ConvScorer()
register_reward("test-convnet", differentiable=True)(_CONV)


@register_reward("test-redness", differentiable=False)
def redness(pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Non-differentiable: red minus the other channels, computed in numpy (no graph at all)."""
    x = pixels.detach().cpu().numpy()
    return torch.from_numpy(x[:, 0].mean(axis=(1, 2)) - x[:, 1:].mean(axis=(1, 2, 3))).float()


def base_spec(method: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "t",
        "model": {"pretrained": "zoo:sd1", "trainable": {"type": "lora", "rank": 4, "alpha": 16}},
        "prompts": {"train": ["a cat", "a dog", "a red car", "a bowl of soup"], "eval": ["a cat", "a red car"]},
        "objective": [{"reward": "test-brightness"}],
        "method": method or {"name": "draft_k", "k": 1},
        "sampling": {"steps": 3, "guidance_scale": 1.0, "resolution": 16},
        "train": {"steps": 4, "batch_size": 2, "lr": 3e-2, "checkpoint_every": 100, "seed": 0},
        "logging": {"images_every": 0, "eval_prompts": 2, "progress": False},
    }
    for k, v in sections.items():
        spec[k] = {**spec[k], **v} if isinstance(spec.get(k), dict) and isinstance(v, dict) else v
    return copy.deepcopy(spec)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine threads mostly spin."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def spec_factory():
    return base_spec


@pytest.fixture
def tiny_diffusion():
    from rewardtune.engine.pipeline import LoraSettings, load_diffusion

    torch.manual_seed(0)
    return load_diffusion("zoo:sd1", lora=LoraSettings(rank=4))
