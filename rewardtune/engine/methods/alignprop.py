"""AlignProp: backprop from the reward through the last K denoising steps (K = all, fixed, or drawn at random).

The latent path is never detached; the model output of a step outside the differentiable set carries no graph (it
is computed under no_grad, which gives the same gradient as computing it with grad and detaching, at a fraction of
the cost). Random truncation draws K uniformly in [lo, hi]:
- `per_step` (TRL, AlignProp 2023): a fresh K_i at every denoising step i; step i keeps its gradient iff
  i >= T - K_i. Steps i >= T - lo always do, steps i < T - hi never, the ones between at random (so the
  differentiable steps need not be contiguous; gradient crosses the others through the latent path).
- `per_batch` (AlignProp 2024): one K per sampled batch; the last K steps keep their gradient.

DRaFT-K is this method with a fixed K (`draft_k.py` registers it under its own name).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rewardtune.engine.methods.base import Stateless, register_method, sample_and_score
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


@dataclass
class AlignPropMethod(Stateless):
    k: int | None = None  # None = all steps
    k_range: tuple[int, int] | None = None
    draw: str = "per_step"
    kl_coeff: float = 0.0
    name: str = "alignprop"

    def grad_steps(self, batch: Batch, steps: int) -> list[int]:
        """Indices of the denoising steps whose model output keeps its gradient (same draws on every rank)."""
        if self.k_range is None:
            k = steps if self.k is None else min(self.k, steps)
            return list(range(steps - k, steps))
        lo, hi = self.k_range
        if self.draw == "per_batch":
            k = min(batch.randint(lo, hi), steps)
            return list(range(steps - k, steps))
        return [i for i in range(steps) if i >= steps - batch.randint(lo, hi)]

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        grad_steps = self.grad_steps(batch, ctx.sampling.steps)
        out = sample_and_score(ctx, batch, set(grad_steps), kl=self.kl_coeff > 0)
        kl, m = kl_penalty(self.kl_coeff, out.result.kl, out.result.kl_steps)
        loss = -out.value.per_sample.mean() + kl
        return MethodOutput(loss, out.value, out.pixels.detach(), list(batch.prompts),
                            {"k": float(len(grad_steps)), **m})


@register_method("alignprop")
def build(m: Any, base_dir: Path | None = None) -> AlignPropMethod:
    return AlignPropMethod(k=None if m.k == "all" else int(m.k), k_range=tuple(m.k_range) if m.k_range else None,
                           draw=m.draw, kl_coeff=m.kl_coeff)
