"""DRaFT-K: the first T-K DDIM steps run entirely under no_grad, the last K with grad; the loss is the negated
objective of the decoded final image (plus the DRaFT+ KL term when kl_coeff > 0)."""
from __future__ import annotations

from dataclasses import dataclass

from rewardtune.engine.sampler import decode, encode_prompts, sample
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


@dataclass
class DraftKMethod:
    k: int = 1
    kl_coeff: float = 0.0
    name: str = "draft_k"

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        s, diff = ctx.sampling, ctx.diff
        k = min(self.k, s.steps)
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
