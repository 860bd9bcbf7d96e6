"""AlignProp: backprop from the reward through the last K DDIM steps (K = all, fixed, or drawn at random).

The latent path is never detached; the eps of the steps before the cut carries no graph because those steps run
under no_grad (which gives the same gradient as computing them with grad and detaching, at a fraction of the
cost). Random truncation draws K uniformly in [lo, hi], once per optimizer step (`per_step`: every micro-batch of
a step shares it) or once per sampled micro-batch (`per_batch`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardtune.engine.sampler import decode, encode_prompts, sample
from rewardtune.engine.types import Batch, MethodOutput, RunContext, generator, kl_penalty


@dataclass
class AlignPropMethod:
    k: int | None = None  # None = all steps
    k_range: tuple[int, int] | None = None
    draw: str = "per_step"
    kl_coeff: float = 0.0
    name: str = "alignprop"

    def truncation(self, batch: Batch, steps: int, seed: int) -> int:
        if self.k_range is not None:
            lo, hi = self.k_range
            if self.draw == "per_step":
                g = generator(seed, "alignprop-k", batch.step)
                return int(torch.randint(lo, hi + 1, (1,), generator=g).item())
            return batch.randint(lo, hi)
        return steps if self.k is None else self.k

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        s = ctx.sampling
        diff = ctx.diff
        k = min(self.truncation(batch, s.steps, ctx.seed), s.steps)
        emb = encode_prompts(diff, batch.prompts, s.guidance)
        h = s.resolution // diff.vae_scale
        x_t = batch.randn(diff.latent_channels, h, h) * diff.scheduler.init_noise_sigma
        res = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta,
                     grad_steps=range(s.steps - k, s.steps), use_checkpoint=s.use_checkpoint,
                     step_noise=lambda i: batch.randn(*x_t.shape[1:]), kl=self.kl_coeff > 0)
        pixels = decode(diff, res.latents, use_checkpoint=s.use_checkpoint)
        value = ctx.objective.evaluate(pixels, batch.prompts, batch.groups)
        kl, m = kl_penalty(self.kl_coeff, res.kl, res.kl_steps)
        loss = -value.per_sample.mean() + kl
        return MethodOutput(loss, value, pixels.detach(), list(batch.prompts), {"k": float(k), **m})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
