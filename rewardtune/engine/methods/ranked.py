"""Assemble reward-ranked learning (FineRewards), for rewards with no gradient.

Each round:
1. Sample N images per prompt for `prompts_per_round` prompts (no grad; this rank's share of the prompts).
2. Score them with every optimized term.
3. Rank each term within each prompt (1 = best, ties averaged; a real rank, not argsort).
4. Combine the ranks with the term weights: c_i = sum_j a_j s_ij (see `rewardtune.engine.objective`).
5. Keep the top-m per prompt: their images, re-encoded by the VAE, and prompts.
6. Train `steps_per_round` optimizer steps with the standard denoising loss on the kept latents (eps or v for
   DDIM families, the flow velocity for flow matching).
The kept set is part of the checkpoint, so a resumed run continues the same round.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardtune.engine.methods.base import register_method
from rewardtune.engine.objective import top_m_per_group
from rewardtune.engine.sampler import (
    add_training_noise,
    decode,
    denoiser_forward,
    encode,
    encode_prompts,
    latent_shape,
    sample,
)
from rewardtune.engine.types import Batch, MethodOutput, RunContext, generator
from rewardtune.errors import UsageError


@dataclass
class RankedMethod:
    samples_per_prompt: int = 4
    top_m: int = 1
    prompts_per_round: int = 8
    steps_per_round: int = 50
    name: str = "ranked"
    kept_latents: torch.Tensor | None = field(default=None, repr=False)
    kept_prompts: list[str] = field(default_factory=list, repr=False)
    round_index: int = -1

    @torch.no_grad()
    def run_round(self, ctx: RunContext, round_index: int) -> MethodOutput:
        s, diff, info = ctx.sampling, ctx.diff, ctx.info
        g = generator(ctx.seed, "ranked-round", round_index)
        n_prompts = len(ctx.train_prompts)
        pick = torch.randint(n_prompts, (self.prompts_per_round,), generator=g).tolist()
        shape = latent_shape(diff, s.resolution)
        noise = torch.randn((self.prompts_per_round, self.samples_per_prompt, *shape), generator=g)
        if self.prompts_per_round < info.world:
            raise ValueError(f"method.prompts_per_round={self.prompts_per_round} gives some of the {info.world} "
                             "ranks no prompt; use at least one prompt per rank")
        if diff.sharded and self.prompts_per_round % info.world:
            raise UsageError(f"method.prompts_per_round={self.prompts_per_round} does not split evenly over "
                             f"{info.world} ranks, which a sharded denoiser (train.fsdp) needs: every rank takes part "
                             f"in every denoiser call. Use a multiple of {info.world}")
        mine = list(range(info.rank, self.prompts_per_round, info.world))
        prompts = [ctx.train_prompts[pick[p]] for p in mine for _ in range(self.samples_per_prompt)]
        groups = torch.tensor([p for p in mine for _ in range(self.samples_per_prompt)])
        x_t = noise[mine].reshape(-1, *shape).to(diff.device) * diff.family.init_noise_sigma(diff)
        eta_g = generator(ctx.seed, "ranked-eta", round_index, info.rank)
        chunk = max(1, ctx.batch_size)
        pixels = []
        for i in range(0, len(prompts), chunk):
            ps = prompts[i:i + chunk]
            emb = encode_prompts(diff, ps, s.guidance)
            xi = x_t[i:i + chunk]
            z = sample(diff, xi, emb, steps=s.steps, guidance=s.guidance, eta=s.eta,
                       step_noise=lambda _, shape=xi.shape: torch.randn(shape, generator=eta_g).to(diff.device)).latents
            pixels.append(decode(diff, z))
        px = torch.cat(pixels)
        value = ctx.objective.evaluate(px, prompts, groups.to(px.device), need_grad=False, rank_all=True)
        assert value.rank_score is not None
        keep = top_m_per_group(value.rank_score.cpu(), groups, self.top_m)
        # train on the kept *images*, re-encoded by the VAE: the sampler's own final latents lie off the VAE's
        # manifold, and self-training on them diverges (measured on the shapes world: the denoising loss on its own
        # latents is 3-5x that on encoded images, and the model turned to noise within 25 rounds; docs/methods.md)
        kept_px = px[keep.to(px.device)]
        self.kept_latents = torch.cat([encode(diff, kept_px[i:i + chunk]) for i in range(0, len(kept_px), chunk)])
        self.kept_prompts = [prompts[i] for i in keep.tolist()]
        self.round_index = round_index
        metrics = {"round": float(round_index), "kept": float(len(keep))}
        return MethodOutput(torch.zeros(()), value, px, prompts, metrics)

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        r = batch.step // self.steps_per_round
        round_out = None
        if self.kept_latents is None or r != self.round_index:
            round_out = self.run_round(ctx, r)
        diff = ctx.diff
        assert self.kept_latents is not None
        n = len(batch)
        idx = torch.randint(len(self.kept_prompts), (n,), generator=batch.gen)
        x0 = self.kept_latents.to(diff.device)[idx.to(diff.device)]
        noise = batch.randn(*x0.shape[1:])
        t = batch.randint_rows(diff.family.num_train_timesteps(diff))
        emb = encode_prompts(diff, [self.kept_prompts[i] for i in idx.tolist()], 1.0)
        noisy, tt, target = add_training_noise(diff, x0, noise, t)
        loss = F.mse_loss(denoiser_forward(diff, noisy, tt, emb, ctx.sampling.guidance), target)
        if round_out is not None:
            round_out.loss = loss
            round_out.metrics["denoise_loss"] = loss.detach()
            return round_out
        return MethodOutput(loss, None, None, [], {"denoise_loss": loss.detach()})

    def state_dict(self) -> dict[str, Any]:
        return {"kept_latents": None if self.kept_latents is None else self.kept_latents.cpu(),
                "kept_prompts": list(self.kept_prompts), "round_index": self.round_index}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.kept_latents = sd["kept_latents"]
        self.kept_prompts = list(sd["kept_prompts"])
        self.round_index = int(sd["round_index"])


@register_method("ranked")
def build(m: Any, base_dir: Path | None = None) -> RankedMethod:
    return RankedMethod(samples_per_prompt=m.samples_per_prompt, top_m=m.top_m,
                        prompts_per_round=m.prompts_per_round, steps_per_round=m.steps_per_round)
