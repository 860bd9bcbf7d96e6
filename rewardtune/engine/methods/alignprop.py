"""AlignProp: backprop from the reward through the last K DDIM steps (K = all, fixed, or drawn at random).

The latent path is never detached; the eps of a step outside the differentiable set carries no graph (it is
computed under no_grad, which gives the same gradient as computing it with grad and detaching, at a fraction of
the cost). Random truncation draws K uniformly in [lo, hi]:
- `per_step` (TRL, AlignProp 2023): a fresh K_i at every denoising step i; step i keeps its eps gradient iff
  i >= T - K_i. Steps i >= T - lo always do, steps i < T - hi never, the ones between at random (so the
  differentiable steps need not be contiguous; gradient crosses the others through the latent path).
- `per_batch` (AlignProp 2024): one K per sampled batch; the last K steps keep their eps gradient.
"""
from __future__ import annotations

from dataclasses import dataclass

from rewardtune.engine.sampler import decode, encode_prompts, sample
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


@dataclass
class AlignPropMethod:
    k: int | None = None  # None = all steps
    k_range: tuple[int, int] | None = None
    draw: str = "per_step"
    kl_coeff: float = 0.0
    name: str = "alignprop"

    def grad_steps(self, batch: Batch, steps: int) -> list[int]:
        """Indices of the denoising steps whose eps keeps its gradient (same draws on every rank)."""
        if self.k_range is None:
            k = steps if self.k is None else min(self.k, steps)
            return list(range(steps - k, steps))
        lo, hi = self.k_range
        if self.draw == "per_batch":
            k = min(batch.randint(lo, hi), steps)
            return list(range(steps - k, steps))
        return [i for i in range(steps) if i >= steps - batch.randint(lo, hi)]

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        s = ctx.sampling
        diff = ctx.diff
        grad_steps = self.grad_steps(batch, s.steps)
        emb = encode_prompts(diff, batch.prompts, s.guidance)
        h = s.resolution // diff.vae_scale
        x_t = batch.randn(diff.latent_channels, h, h) * diff.scheduler.init_noise_sigma
        res = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta,
                     grad_steps=set(grad_steps), use_checkpoint=s.use_checkpoint,
                     step_noise=lambda i: batch.randn(*x_t.shape[1:]), kl=self.kl_coeff > 0)
        pixels = decode(diff, res.latents, use_checkpoint=s.use_checkpoint)
        value = ctx.objective.evaluate(pixels, batch.prompts, batch.groups)
        kl, m = kl_penalty(self.kl_coeff, res.kl, res.kl_steps)
        loss = -value.per_sample.mean() + kl
        return MethodOutput(loss, value, pixels.detach(), list(batch.prompts), {"k": float(len(grad_steps)), **m})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
