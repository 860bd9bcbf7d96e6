"""Assemble reward-ranked learning (FineRewards), for rewards with no gradient.

Each round:
1. Sample N images per prompt for `prompts_per_round` prompts (no grad; this rank's share of the prompts).
2. Score them with every optimized term.
3. Rank each term within each prompt (1 = best, ties averaged; a real rank, not argsort).
4. Combine the ranks with the term weights: c_i = sum_j a_j s_ij (see `rewardtune.engine.objective`).
5. Keep the top-m per prompt; re-encode the round's images by the VAE.
6. Train `steps_per_round` optimizer steps with the standard denoising loss (eps or v for DDIM families, the flow
   velocity for flow matching), weighted per prompt: +1/m on each kept image, minus `baseline`/N on every image
   of the prompt (kept ones included), all images of a prompt at one noise draw and timestep; with `kl_coeff`,
   plus kl_coeff * mean ||out_theta - out_base||^2 on the same inputs (DRaFT+'s regularizer).
   With `loss: dpo`, instead Diffusion-DPO (arXiv 2311.12908) on every (kept, not kept) pair of a prompt:
   softplus(beta/2 * (d_kept - d_other)), d = an image's denoising loss less the frozen base's on the same input.
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
    base_denoiser_forward,
    decode,
    denoiser_forward,
    encode,
    encode_prompts,
    latent_shape,
    sample,
)
from rewardtune.engine.types import Batch, MethodOutput, RunContext, generator, kl_penalty
from rewardtune.errors import UsageError


@dataclass
class RankedMethod:
    samples_per_prompt: int = 4
    top_m: int = 1
    prompts_per_round: int = 8
    steps_per_round: int = 50
    baseline: float = 1.0
    kl_coeff: float = 0.0
    loss_kind: str = "weighted"  # or "dpo"
    beta: float = 5000.0
    name: str = "ranked"
    kept_latents: torch.Tensor | None = field(default=None, repr=False)  # [prompts, K, *latent]: K = N, or m
    kept_weights: torch.Tensor | None = field(default=None, repr=False)  # [prompts, K]: each image's loss weight
    kept_prompts: list[str] = field(default_factory=list, repr=False)  # one per prompt
    round_index: int = -1

    def __post_init__(self) -> None:
        if self.loss_kind not in ("weighted", "dpo"):
            raise ValueError(f"loss_kind must be 'weighted' or 'dpo', not {self.loss_kind!r}")
        if self.loss_kind == "dpo" and self.top_m >= self.samples_per_prompt:
            raise ValueError("loss_kind 'dpo' needs an image left out of the kept ones: top_m < samples_per_prompt")

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
        self.kept_latents, self.kept_weights = self._training_images(diff, px, keep, chunk)
        self.kept_prompts = prompts[::self.samples_per_prompt]
        self.round_index = round_index
        metrics = {"round": float(round_index), "kept": float(len(keep))}
        return MethodOutput(torch.zeros(()), value, px, prompts, metrics)

    def _training_images(self, diff: Any, px: torch.Tensor, keep: torch.Tensor,
                         chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The round's training latents per prompt, [prompts, K, *latent], and their loss weights [prompts, K].

        Images, not the sampler's final latents, re-encoded by the VAE: those latents lie off the VAE's manifold, and
        self-training on them diverged (measured on the shapes world: their denoising loss was 3-5x that of encoded
        images and the model turned to noise within 25 rounds; docs/methods.md).

        Weights: +1/m on each kept image, minus `baseline`/N on every image of its prompt. Plain fine-tuning on the
        kept images (baseline 0) also fits what all of this model's samples share, its own errors (on the shapes
        world: darker, textured backgrounds, halos), and the next round samples from the model that learned them: the
        errors compound round after round (measured: the judge 41% -> 17% in 100 LoRA steps at lr 1e-3; on
        ground-truth world images the same training raised it). With baseline 1 the weights of a prompt
        sum to zero, so what every sample shares cancels and only what sets the kept images apart from their
        siblings moves the model (41% -> 66%). With baseline 0 only the kept images are stored.

        With loss dpo every image is stored, weighted +1/m if kept and -1/(N - m) if not: the sign says which side
        of the prompt's pairs an image is on."""
        n, m = self.samples_per_prompt, self.top_m
        w = torch.zeros(len(px))
        w[keep] = 1.0 / m
        if self.loss_kind == "dpo":
            w[w == 0] = -1.0 / (n - m)
        else:
            w -= self.baseline / n
        every = self.loss_kind == "dpo" or self.baseline > 0
        rows = torch.arange(len(px)) if every else keep
        latents = torch.cat([encode(diff, px[rows[i:i + chunk].to(px.device)]) for i in range(0, len(rows), chunk)])
        k = n if every else m
        return latents.reshape(-1, k, *latents.shape[1:]), w[rows].reshape(-1, k)

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        r = batch.step // self.steps_per_round
        round_out = None
        if self.kept_latents is None or r != self.round_index:
            round_out = self.run_round(ctx, r)
        diff = ctx.diff
        assert self.kept_latents is not None and self.kept_weights is not None
        # whole prompts per step, each prompt's images at one noise draw and timestep: the baseline then compares
        # images, not noise draws (at least one prompt, so a batch smaller than K trains K rows)
        n_prompts, k = self.kept_weights.shape
        g = max(1, len(batch) // k)
        pick = torch.randint(n_prompts, (g,), generator=batch.gen)
        x0 = self.kept_latents[pick].flatten(0, 1).to(diff.device)
        w = self.kept_weights[pick].flatten().to(diff.device)
        noise = batch.randn(*x0.shape[1:])[:g].repeat_interleave(k, 0)
        t = batch.randint_rows(diff.family.num_train_timesteps(diff))[:g].repeat_interleave(k, 0)
        emb = encode_prompts(diff, [self.kept_prompts[i] for i in pick.tolist() for _ in range(k)], 1.0)
        noisy, tt, target = add_training_noise(diff, x0, noise, t)
        guidance = ctx.sampling.guidance
        out = denoiser_forward(diff, noisy, tt, emb, guidance)

        def per_image_loss(output: torch.Tensor) -> torch.Tensor:
            return (output - target).pow(2).flatten(1).mean(1)

        per_image = per_image_loss(out)
        metrics = {"denoise_loss": per_image.mean().detach()}
        base = None
        if self.kl_coeff > 0 or self.loss_kind == "dpo":
            base = base_denoiser_forward(diff, noisy, tt, emb, guidance)
        if self.loss_kind == "dpo":
            assert base is not None
            loss, dpo_metrics = self._dpo_loss(per_image - per_image_loss(base), w, k)
            metrics.update(dpo_metrics)
        else:
            loss = (per_image * w).sum() / g
        if self.kl_coeff > 0:
            # the zero-sum loss has no anchor of its own; this holds the model near its base on the round's images
            assert base is not None
            kl, m = kl_penalty(self.kl_coeff, (out - base).pow(2).mean(), 1)
            loss = loss + kl
            metrics.update(m)
        if round_out is not None:
            round_out.loss = loss
            round_out.metrics.update(metrics)
            return round_out
        return MethodOutput(loss, None, None, [], metrics)

    def _dpo_loss(self, d: torch.Tensor, w: torch.Tensor, k: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Diffusion-DPO over every (kept, not kept) pair of each prompt, averaged over the pairs. `d` [g * k]: each
        image's denoising loss less the base's on the same input (lower: the model likes it more than the base
        does); `w`'s sign marks the kept images. The loss saturates once a pair's margin is a few times 2/beta,
        and its optimum is the base reweighted by the preference, so the model stays anchored to its base."""
        d, kept = d.view(-1, k), (w > 0).view(-1, k)
        margin = d[:, :, None] - d[:, None, :]  # [prompt, i, j]: d_i - d_j
        pairs = (kept[:, :, None] & ~kept[:, None, :]).to(d.dtype)  # i kept, j not
        n_pairs = pairs.sum()
        loss = (F.softplus(self.beta / 2 * margin) * pairs).sum() / n_pairs
        # accuracy as Diffusion-DPO's reference code counts it: a pair the model prefers the kept image of (more
        # than the base does) counts 1, a tie (every pair at the start) 1/2
        right = (margin < 0).to(d.dtype) + 0.5 * (margin == 0).to(d.dtype)
        return loss, {"dpo_margin": ((margin * pairs).sum() / n_pairs).detach(),
                      "dpo_accuracy": ((right * pairs).sum() / n_pairs).detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"kept_latents": None if self.kept_latents is None else self.kept_latents.cpu(),
                "kept_weights": None if self.kept_weights is None else self.kept_weights.cpu(),
                "kept_prompts": list(self.kept_prompts), "round_index": self.round_index}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.kept_latents, self.kept_weights = sd["kept_latents"], sd.get("kept_weights")
        if self.kept_latents is not None and self.kept_weights is None:
            # a checkpoint from before the weights: its kept images, one per row, each trained at weight 1
            self.kept_latents = self.kept_latents.unsqueeze(1)
            self.kept_weights = torch.ones(len(self.kept_latents), 1)
        self.kept_prompts = list(sd["kept_prompts"])
        self.round_index = int(sd["round_index"])


@register_method("ranked")
def build(m: Any, base_dir: Path | None = None) -> RankedMethod:
    return RankedMethod(samples_per_prompt=m.samples_per_prompt, top_m=m.top_m,
                        prompts_per_round=m.prompts_per_round, steps_per_round=m.steps_per_round, baseline=m.baseline,
                        kl_coeff=m.kl_coeff, loss_kind=m.loss, beta=m.beta)
