"""Tiny offline setup for engine tests: the zoo's SD-1.x twin and small rewards registered as plain callables."""
from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import rewards_for_tests  # noqa: E402,F401  (registers the test rewards)


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


@pytest.fixture
def nan_on_steps():
    """A `test-nan-on-steps` reward of this test's own (the registry forgets it after the test), disarmed:
    `nan_on_steps.arm({2})` makes optimizer step 2's reward NaN."""
    from rewards_for_tests import NanOnTrainingSteps

    from rewardtune.registry import register_reward

    reward = NanOnTrainingSteps()
    register_reward("test-nan-on-steps", differentiable=True)(reward)
    return reward
