"""ReFL (ImageReward): stop the sampling chain at a random step, predict x_0 there with one differentiable
denoiser call, and apply a loss to its reward.

1. Draw the stop step s uniformly in [lo, hi] (0-based schedule indices; default 30-39 of 40).
2. Steps 0..s-1 run under no_grad.
3. At step s, one differentiable denoiser call predicts x_0 (DDIM: from eps or v; flow matching:
   x_0 = x_t - sigma_s v), which is decoded and scored.
4. Loss: `scale * relu(margin - r)` as in ReFL (lambda = 1e-3, c = 2), or plain `-r`.

Optionally every `every`-th step is a denoising (pretraining) step on a caption/image dataset, as the paper
describes (the public code omits it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from rewardtune.engine.methods.base import Stateless, register_method, sample_and_score
from rewardtune.engine.sampler import add_training_noise, denoiser_forward, encode, encode_prompts
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty
from rewardtune.errors import UsageError


@dataclass
class PretrainData:
    """Caption/image pairs from a JSONL file ({"image": path, "caption": text}, paths relative to the file)."""

    path: Path
    weight: float = 1.0
    every: int = 2
    batch_size: int = 2
    _items: list[tuple[Path, str]] = field(default_factory=list, repr=False)
    _latents: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def items(self) -> list[tuple[Path, str]]:
        if not self._items:
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                obj = json.loads(line)
                if not isinstance(obj, dict) or "image" not in obj or "caption" not in obj:
                    raise ValueError(f"{self.path}:{n}: each line needs 'image' and 'caption'")
                img = Path(obj["image"])
                self._items.append((img if img.is_absolute() else self.path.parent / img, str(obj["caption"])))
            if not self._items:
                raise ValueError(f"{self.path}: no pretraining pairs")
        return self._items

    @torch.no_grad()
    def latents(self, diff, i: int, resolution: int) -> torch.Tensor:
        """VAE latent (distribution mode, so it is deterministic) of image i, cached."""
        if i not in self._latents:
            from rewardtune.images import open_image, pil_to_tensor

            img = open_image(self.items()[i][0]).convert("RGB").resize((resolution, resolution))
            self._latents[i] = encode(diff, pil_to_tensor(img).unsqueeze(0))[0]
        return self._latents[i]


@dataclass
class ReFLMethod(Stateless):
    stop_range: tuple[int, int] = (30, 39)
    loss_type: str = "relu"
    margin: float = 2.0
    scale: float = 1e-3
    kl_coeff: float = 0.0
    pretrain: PretrainData | None = None
    name: str = "refl"

    def extra_prompts(self) -> list[str]:
        return [caption for _, caption in self.pretrain.items()] if self.pretrain is not None else []

    def is_pretrain_step(self, step: int) -> bool:
        return self.pretrain is not None and step % self.pretrain.every == self.pretrain.every - 1

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        if self.is_pretrain_step(batch.step):
            return self._pretrain_loss(ctx, batch)
        stop = batch.randint(*self.stop_range)
        out = sample_and_score(ctx, batch, (stop,), stop_at=stop, kl=self.kl_coeff > 0)
        r = out.value.per_sample
        loss = self.scale * F.relu(self.margin - r).mean() if self.loss_type == "relu" else -r.mean()
        kl, m = kl_penalty(self.kl_coeff, out.result.kl, out.result.kl_steps)
        return MethodOutput(loss + kl, out.value, out.pixels.detach(), list(batch.prompts),
                            {"stop_step": float(stop), **m})

    def _pretrain_loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        assert self.pretrain is not None
        diff, s = ctx.diff, ctx.sampling
        items = self.pretrain.items()
        # one global draw (pairs, noise, timesteps) from the generator every rank seeds alike, sliced by rank: N ranks
        # with batch_size B each see B/N distinct pairs, as one rank sees all B (a data-parallel SFT loss)
        n, world = self.pretrain.batch_size, ctx.info.world
        if n % world:
            raise UsageError(f"method.pretrain.batch_size={n} must split evenly into {world} ranks")
        rows = slice(ctx.info.rank * (n // world), (ctx.info.rank + 1) * (n // world))
        idx = [int(i) for i in torch.randint(len(items), (n,), generator=batch.gen)]
        first = self.pretrain.latents(diff, idx[0], s.resolution)
        noise = torch.randn((n, *first.shape), generator=batch.gen)[rows].to(first.device)
        t = torch.randint(0, diff.family.num_train_timesteps(diff), (n,), generator=batch.gen)[rows].to(first.device)
        idx = idx[rows]
        x0 = torch.stack([self.pretrain.latents(diff, i, s.resolution) for i in idx])
        emb = encode_prompts(diff, [items[i][1] for i in idx], 1.0)
        noisy, tt, target = add_training_noise(diff, x0, noise, t)
        mse = F.mse_loss(denoiser_forward(diff, noisy, tt, emb, s.guidance), target)
        return MethodOutput(self.pretrain.weight * mse, None, None, [], {"pretrain_loss": mse.detach()})


@register_method("refl")
def build(m: Any, base_dir: Path | None = None) -> ReFLMethod:
    pre = None
    if m.pretrain is not None:
        p = Path(m.pretrain.data)
        p = p if p.is_absolute() or base_dir is None else base_dir / p
        pre = PretrainData(p, weight=m.pretrain.weight, every=m.pretrain.every, batch_size=m.pretrain.batch_size)
    return ReFLMethod(stop_range=tuple(m.stop_range), loss_type=m.loss, margin=m.margin, scale=m.scale,
                      kl_coeff=m.kl_coeff, pretrain=pre)
