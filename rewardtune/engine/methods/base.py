"""What every method shares: the `Method` protocol, the registry that maps a spec's `method.name` onto a builder,
and the first lines of every reward-gradient loss (`sample_and_score`).

A method is one file: a class with `name`, `loss(ctx, batch) -> MethodOutput`, `state_dict()` and
`load_state_dict()`, and a builder registered with `@register_method("name")` that maps the spec's `method`
section onto it. The file is listed once in `rewardtune.engine.methods.BUILTIN` (and its spec section is a model
in `rewardtune.spec.schema`).
"""
from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rewardtune.engine.objective import ObjectiveValue
from rewardtune.engine.sampler import SampleResult, decode, encode_prompts, latent_shape, sample
from rewardtune.engine.types import Batch, MethodOutput, RunContext


class Method(Protocol):
    name: str

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


Builder = Callable[[Any, "Path | None"], Method]
_BUILDERS: dict[str, Builder] = {}


def register_method(name: str) -> Callable[[Builder], Builder]:
    """Register `builder(spec_method_section, base_dir) -> Method` under `name` (a name is registered once)."""
    def deco(fn: Builder) -> Builder:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise ValueError(f"method '{name}' is already registered")
        _BUILDERS[name] = fn
        return fn
    return deco


def extra_prompts(method: Any) -> list[str]:
    """Prompts a method encodes besides the run's train and eval prompts (ReFL's pretraining captions): an optional
    `extra_prompts()` of the method."""
    fn = getattr(method, "extra_prompts", None)
    return list(fn()) if callable(fn) else []


def registered_methods() -> list[str]:
    return sorted(_BUILDERS)


def builder(name: str) -> Builder:
    if name not in _BUILDERS:
        raise ValueError(f"unknown method '{name}'; registered: {', '.join(registered_methods())}")
    return _BUILDERS[name]


def initial_noise(ctx: RunContext, batch: Batch) -> torch.Tensor:
    """x_T of this micro-batch: drawn from the batch's generator (the same on every rank), scaled as the family's
    sampler starts."""
    diff = ctx.diff
    return batch.randn(*latent_shape(diff, ctx.sampling.resolution)) * diff.family.init_noise_sigma(diff)


@dataclass
class Scored:
    result: SampleResult
    pixels: torch.Tensor  # what the rewards saw, with graph
    value: ObjectiveValue


def sample_and_score(ctx: RunContext, batch: Batch, grad_steps: Container[int], *, stop_at: int | None = None,
                     kl: bool = False) -> Scored:
    """The first lines of every reward-gradient method: encode the prompts, draw x_T, sample with gradient through
    `grad_steps`, decode (the final latents, or with `stop_at` the x0 predicted at that step), score."""
    s, diff = ctx.sampling, ctx.diff
    emb = encode_prompts(diff, batch.prompts, s.guidance)
    x_t = initial_noise(ctx, batch)
    res = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta, grad_steps=grad_steps,
                 stop_at=stop_at, use_checkpoint=s.use_checkpoint, step_noise=lambda i: batch.randn(*x_t.shape[1:]),
                 kl=kl)
    latents = res.x0_pred if stop_at is not None else res.latents
    assert latents is not None
    pixels = decode(diff, latents, use_checkpoint=s.use_checkpoint)
    return Scored(res, pixels, ctx.objective.evaluate(pixels, batch.prompts, batch.groups))


class Stateless:
    """For methods that keep nothing between steps."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        pass
