"""DRaFT-LV: K = 1 with lower-variance gradients.

1. Sample x_0 (latents) with the whole chain under no_grad.
2. n times: re-noise x_0 to the last timestep of the schedule with a fresh eps, then take one differentiable
   denoising step (the n draws go through the UNet as one batch).
3. The objective is the sum over the n predictions of their rewards (mean over samples).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rewardtune.engine.sampler import (
    add_noise,
    ddim_step,
    decode,
    encode_prompts,
    model_output,
    prev_timestep,
    sample,
    timesteps,
)
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


@dataclass
class DraftLVMethod:
    n: int = 2
    kl_coeff: float = 0.0
    name: str = "draft_lv"

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        s, diff = ctx.sampling, ctx.diff
        b = len(batch)
        h = s.resolution // diff.vae_scale
        shape = (diff.latent_channels, h, h)
        x_t = batch.randn(*shape) * diff.scheduler.init_noise_sigma
        emb = encode_prompts(diff, batch.prompts, s.guidance)
        with torch.no_grad():
            x0 = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta,
                        step_noise=lambda i: batch.randn(*shape)).latents
        t_last = int(timesteps(diff, s.steps)[-1])
        t_prev = prev_timestep(diff, t_last, s.steps)
        eps = torch.cat([batch.randn(*shape) for _ in range(self.n)])  # [n*b], draw-major
        x_noisy = add_noise(diff, x0.repeat(self.n, 1, 1, 1), eps, t_last)
        prompts_n = list(batch.prompts) * self.n
        emb_n = encode_prompts(diff, prompts_n, s.guidance)
        out = model_output(diff, x_noisy, t_last, emb_n, s.guidance, use_checkpoint=s.use_checkpoint, blocks=True)
        kl_sum, kl_steps = None, 0
        if self.kl_coeff > 0:
            from rewardtune.engine.sampler import _base_output

            kl_sum, kl_steps = (out - _base_output(diff, x_noisy, t_last, emb_n, s.guidance)).pow(2).mean(), 1
        pred, _ = ddim_step(diff, x_noisy, out, t_last, t_prev)
        pixels = decode(diff, pred, use_checkpoint=s.use_checkpoint)
        groups = batch.groups.repeat(self.n)
        value = ctx.objective.evaluate(pixels, prompts_n, groups)
        per_sample = value.per_sample.view(self.n, b).sum(0)
        kl, m = kl_penalty(self.kl_coeff, kl_sum, kl_steps)
        loss = -per_sample.mean() + kl
        return MethodOutput(loss, value, pixels.detach(), prompts_n, {"lv_draws": float(self.n), **m})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
