"""rewardtune: fine-tune text-to-image diffusion models against reward models.

    import rewardtune
    r = rewardtune.load_reward("imagereward")
    r.score("a red bicycle", ["a.png", "b.png"])
    result = rewardtune.run("specs/demo.yaml", tiny=True)

Attributes are imported lazily, so `import rewardtune` stays cheap (no torch).
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_reward": "rewardtune.registry:load_reward",
    "register_reward": "rewardtune.registry:register_reward",
    "load_spec": "rewardtune.spec.load:load_spec",
    "Spec": "rewardtune.spec.schema:Spec",
    "Reward": "rewardtune.rewards.base:Reward",
    "run": "rewardtune.api:run",
    "RewardtuneError": "rewardtune.errors:RewardtuneError",
    "SpecError": "rewardtune.errors:SpecError",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:  # pragma: no cover
    from rewardtune.api import run as run
    from rewardtune.errors import RewardtuneError as RewardtuneError
    from rewardtune.errors import SpecError as SpecError
    from rewardtune.registry import load_reward as load_reward
    from rewardtune.registry import register_reward as register_reward
    from rewardtune.rewards.base import Reward as Reward
    from rewardtune.spec.load import load_spec as load_spec
    from rewardtune.spec.schema import Spec as Spec


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'rewardtune' has no attribute '{name}'")
    module, _, attr = target.partition(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
