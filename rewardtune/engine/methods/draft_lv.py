"""DRaFT-LV: K = 1 with lower-variance gradients.

1. Sample x_0 (latents) with the whole chain under no_grad.
2. n times: re-noise x_0 to the last step of the schedule with a fresh eps (DDIM: the forward process at its last
   timestep; flow matching: back along the flow path, (1 - sigma) x_0 + sigma eps), then take one differentiable
   denoising step (the n draws go through the denoiser as one batch).
3. The objective is the sum over the n predictions of their rewards (mean over samples).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rewardtune.engine.methods.base import Stateless, initial_noise, register_method
from rewardtune.engine.sampler import (
    base_output,
    decode,
    encode_prompts,
    model_output,
    renoise,
    sample,
    schedule,
    step,
)
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


@dataclass
class DraftLVMethod(Stateless):
    n: int = 2
    kl_coeff: float = 0.0
    name: str = "draft_lv"

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        s, diff = ctx.sampling, ctx.diff
        b = len(batch)
        x_t = initial_noise(ctx, batch)
        shape = x_t.shape[1:]
        emb = encode_prompts(diff, batch.prompts, s.guidance)
        with torch.no_grad():
            x0 = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta,
                        step_noise=lambda i: batch.randn(*shape)).latents
        sched = schedule(diff, s.steps, tuple(x0.shape[-2:]))
        last = s.steps - 1
        eps = torch.cat([batch.randn(*shape) for _ in range(self.n)])  # [n*b], draw-major
        x_noisy = renoise(diff, sched, last, x0.repeat(self.n, 1, 1, 1), eps)
        prompts_n = list(batch.prompts) * self.n
        emb_n = encode_prompts(diff, prompts_n, s.guidance)
        t_last = sched.t(last)
        out = model_output(diff, x_noisy, t_last, emb_n, s.guidance, use_checkpoint=s.use_checkpoint, blocks=True)
        kl_sum, kl_steps = None, 0
        if self.kl_coeff > 0:
            kl_sum, kl_steps = (out - base_output(diff, x_noisy, t_last, emb_n, s.guidance)).pow(2).mean(), 1
        pred, _ = step(diff, sched, last, x_noisy, out)
        pixels = decode(diff, pred, use_checkpoint=s.use_checkpoint)
        groups = batch.groups.repeat(self.n)
        value = ctx.objective.evaluate(pixels, prompts_n, groups)
        per_sample = value.per_sample.view(self.n, b).sum(0)
        kl, m = kl_penalty(self.kl_coeff, kl_sum, kl_steps)
        loss = -per_sample.mean() + kl
        return MethodOutput(loss, value, pixels.detach(), prompts_n, {"lv_draws": float(self.n), **m})


@register_method("draft_lv")
def build(m: Any, base_dir: Path | None = None) -> DraftLVMethod:
    return DraftLVMethod(n=m.n, kl_coeff=m.kl_coeff)
