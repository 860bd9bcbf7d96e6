"""Callbacks: receive step metrics and sampled images with their prompts and rewards (log them anywhere).

A callback is either a plain callable, called with a `StepEvent` after every optimizer step, or an object with
any of `on_train_start(info)`, `on_step(event)`, `on_eval(event)`, `on_train_end(result)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class StepEvent:
    step: int  # optimizer steps done (1-based after the first step)
    metrics: dict[str, float]
    images: torch.Tensor | None = None  # [n,3,H,W] float in [0,1], on CPU: what the rewards scored this step
    prompts: list[str] = field(default_factory=list)
    rewards: dict[str, list[float]] = field(default_factory=dict)  # term label -> raw reward per image


@dataclass
class EvalEvent:
    step: int
    images: torch.Tensor  # [n,3,H,W] in [0,1], eval prompts on fixed noise
    prompts: list[str]
    rewards: dict[str, list[float]]
    grid_path: str | None = None


class CallbackList:
    def __init__(self, callbacks: Any = ()):
        self.callbacks = list(callbacks or ())

    def _call(self, name: str, arg: Any) -> None:
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None and callable(fn):
                fn(arg)
            elif name == "on_step" and callable(cb) and not any(
                    hasattr(cb, n) for n in ("on_train_start", "on_step", "on_eval", "on_train_end")):
                cb(arg)

    def train_start(self, info: dict[str, Any]) -> None:
        self._call("on_train_start", info)

    def step(self, event: StepEvent) -> None:
        self._call("on_step", event)

    def eval(self, event: EvalEvent) -> None:
        self._call("on_eval", event)

    def train_end(self, result: Any) -> None:
        self._call("on_train_end", result)
