"""ReFL (ImageReward): stop the DDIM chain at a random step, predict x_0 there with one differentiable UNet call,
and apply a loss to its reward.

1. Draw the stop step s uniformly in [lo, hi] (0-based schedule indices; default 30-39 of 40).
2. Steps 0..s-1 run under no_grad.
3. At step s, one differentiable UNet call predicts x_0, which is decoded and scored.
4. Loss: `scale * relu(margin - r)` as in ReFL (lambda = 1e-3, c = 2), or plain `-r`.

Optionally every `every`-th step is a denoising (pretraining) step on a caption/image dataset, as the paper
describes (the public code omits it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from rewardtune.engine.sampler import (
    add_noise,
    decode,
    denoising_target,
    encode,
    encode_prompts,
    sample,
    unet_forward,
)
from rewardtune.engine.types import Batch, MethodOutput, RunContext, kl_penalty


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
class ReFLMethod:
    stop_range: tuple[int, int] = (30, 39)
    loss_type: str = "relu"
    margin: float = 2.0
    scale: float = 1e-3
    kl_coeff: float = 0.0
    pretrain: PretrainData | None = None
    name: str = "refl"

    def is_pretrain_step(self, step: int) -> bool:
        return self.pretrain is not None and step % self.pretrain.every == self.pretrain.every - 1

    def loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        if self.is_pretrain_step(batch.step):
            return self._pretrain_loss(ctx, batch)
        s, diff = ctx.sampling, ctx.diff
        stop = batch.randint(*self.stop_range)
        emb = encode_prompts(diff, batch.prompts, s.guidance)
        h = s.resolution // diff.vae_scale
        x_t = batch.randn(diff.latent_channels, h, h) * diff.scheduler.init_noise_sigma
        res = sample(diff, x_t, emb, steps=s.steps, guidance=s.guidance, eta=s.eta, grad_steps=(stop,),
                     stop_at=stop, use_checkpoint=s.use_checkpoint,
                     step_noise=lambda i: batch.randn(*x_t.shape[1:]), kl=self.kl_coeff > 0)
        pixels = decode(diff, res.x0_pred, use_checkpoint=s.use_checkpoint)
        value = ctx.objective.evaluate(pixels, batch.prompts, batch.groups)
        r = value.per_sample
        loss = self.scale * F.relu(self.margin - r).mean() if self.loss_type == "relu" else -r.mean()
        kl, m = kl_penalty(self.kl_coeff, res.kl, res.kl_steps)
        return MethodOutput(loss + kl, value, pixels.detach(), list(batch.prompts),
                            {"stop_step": float(stop), **m})

    def _pretrain_loss(self, ctx: RunContext, batch: Batch) -> MethodOutput:
        assert self.pretrain is not None
        diff, s = ctx.diff, ctx.sampling
        items = self.pretrain.items()
        idx = [int(i) for i in torch.randint(len(items), (self.pretrain.batch_size,), generator=batch.gen)]
        x0 = torch.stack([self.pretrain.latents(diff, i, s.resolution) for i in idx])
        noise = torch.randn(x0.shape, generator=batch.gen).to(x0.device)
        t = torch.randint(0, diff.scheduler.config.num_train_timesteps, (len(idx),), generator=batch.gen).to(x0.device)
        emb = encode_prompts(diff, [items[i][1] for i in idx], 1.0)

        out = unet_forward(diff, add_noise(diff, x0, noise, t), t, emb)
        mse = F.mse_loss(out, denoising_target(diff, x0, noise, t))
        return MethodOutput(self.pretrain.weight * mse, None, None, [], {"pretrain_loss": mse.detach()})

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, sd: dict) -> None:
        pass
