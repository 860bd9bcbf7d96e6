"""Stable Diffusion 1.x/2.x: UNet2DConditionModel, one CLIP text encoder, DDIM (epsilon or v prediction).

Also the DDIM helpers SDXL shares (`ddim_step`, `prev_timestep`, `add_noise`, `denoising_target`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rewardtune.engine.families import Conditioning, Schedule, vae_scale_shift, vae_unscale_shift

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion


# ------------------------------------------------------------------------------------------------- DDIM (shared)
def _alphas(diff: Diffusion, device: torch.device) -> torch.Tensor:
    """alphas_cumprod in float32 on `device`, with the final alpha appended (index -1), copied there once: a
    copy per sampling step would make the host wait for the device each time."""
    key = ("alphas_cumprod", str(device))
    if key not in diff.extras:
        sched = diff.scheduler
        final = torch.as_tensor(sched.final_alpha_cumprod, dtype=sched.alphas_cumprod.dtype).reshape(1)
        diff.extras[key] = torch.cat([sched.alphas_cumprod, final]).to(device=device, dtype=torch.float32)
    return diff.extras[key]


def _alpha(diff: Diffusion, t: int, device: torch.device) -> torch.Tensor:
    return _alphas(diff, device)[t if t >= 0 else -1]


def prev_timestep(diff: Diffusion, t: int, steps: int) -> int:
    return int(t) - diff.scheduler.config.num_train_timesteps // steps


def ddim_step(diff: Diffusion, x: torch.Tensor, out: torch.Tensor, t: int, t_prev: int, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM update x_t -> x_{t_prev}; returns (x_prev, x0_pred). Differentiable in x and out."""
    a_t = _alpha(diff, t, x.device)
    a_p = _alpha(diff, t_prev, x.device)
    if diff.prediction_type == "epsilon":
        eps = out
        x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    elif diff.prediction_type == "v_prediction":
        x0 = a_t.sqrt() * x - (1 - a_t).sqrt() * out
        eps = a_t.sqrt() * out + (1 - a_t).sqrt() * x
    else:
        raise ValueError(f"unsupported prediction_type '{diff.prediction_type}'")
    cfg = diff.scheduler.config
    if cfg.get("thresholding", False):
        raise ValueError("DDIM with dynamic thresholding is not supported: set thresholding to false in the "
                         "pipeline's scheduler config")
    if cfg.get("clip_sample", False):  # as DDIMScheduler.step: x0 is clipped, eps is not recomputed from it
        x0 = x0.clamp(-cfg.clip_sample_range, cfg.clip_sample_range)
    sigma = eta * ((1 - a_p) / (1 - a_t)).sqrt() * (1 - a_t / a_p).sqrt() if eta > 0 else torch.zeros((), device=x.device)
    x_prev = a_p.sqrt() * x0 + (1 - a_p - sigma ** 2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("eta > 0 needs per-step noise")
        x_prev = x_prev + sigma * noise
    return x_prev, x0


def add_noise(diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor, t: int | torch.Tensor) -> torch.Tensor:
    ac = _alphas(diff, x0.device)[:-1]
    a = ac[t] if isinstance(t, int) else ac[t].view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def denoising_target(diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The regression target of the standard denoising loss (eps, or v for v-prediction models)."""
    if diff.prediction_type == "v_prediction":
        a = _alphas(diff, x0.device)[:-1][t].view(-1, 1, 1, 1)
        return a.sqrt() * noise - (1 - a).sqrt() * x0
    return noise


class DDIMFamily:
    """What every DDIM-sampled UNet family shares: schedule, step, re-noising, denoising pairs, latents."""

    flow = False
    denoiser_name = "unet"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    shard_blocks = ("down_blocks", "mid_block", "up_blocks")

    def setup(self, diff: Diffusion, pipe: Any) -> None:
        """Nothing to adjust after loading (SDXL overrides this for its VAE)."""

    def make_scheduler(self, config: Any) -> Any:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(config)

    def sdpa_modules(self) -> tuple[str, ...]:
        return ("unet", "vae")

    def uses_cfg(self, guidance: float) -> bool:
        return guidance > 1.0

    def timestep(self, t: int | float, device: torch.device) -> torch.Tensor:
        return torch.full((1,), int(t), device=device, dtype=torch.long)

    def schedule(self, diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None = None) -> Schedule:
        diff.scheduler.set_timesteps(steps)
        return Schedule(diff.scheduler.timesteps.clone(), steps)

    def step(self, diff: Diffusion, sched: Schedule, i: int, x: torch.Tensor, out: torch.Tensor, eta: float = 0.0,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        t = int(sched.timesteps[i])
        return ddim_step(diff, x, out, t, prev_timestep(diff, t, sched.steps), eta, noise)

    def renoise(self, diff: Diffusion, sched: Schedule, i: int, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return add_noise(diff, x0, eps, int(sched.timesteps[i]))

    def num_train_timesteps(self, diff: Diffusion) -> int:
        return int(diff.scheduler.config.num_train_timesteps)

    def training_pair(self, diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor,
                      index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(noisy input, timesteps, target) of the standard denoising loss at training timesteps `index`."""
        return add_noise(diff, x0, noise, index), index, denoising_target(diff, x0, noise, index)

    def latent_shape(self, diff: Diffusion, resolution: int) -> tuple[int, int, int]:
        h = resolution // diff.vae_scale
        return diff.denoiser.config.in_channels, h, h

    def init_noise_sigma(self, diff: Diffusion) -> float:
        return diff.scheduler.init_noise_sigma

    def to_vae(self, diff: Diffusion, latents: torch.Tensor) -> torch.Tensor:
        return vae_scale_shift(diff.vae, latents)

    def from_vae(self, diff: Diffusion, z: torch.Tensor) -> torch.Tensor:
        return vae_unscale_shift(diff.vae, z)


class SDFamily(DDIMFamily):
    name = "sd"
    pipeline_class = "StableDiffusionPipeline"
    text_encoders = ("text_encoder",)
    tokenizers = ("tokenizer",)

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"safety_checker": None, "requires_safety_checker": False}

    def encode_text(self, diff: Diffusion, texts: list[str]) -> Conditioning:
        tok = diff.tokenizer
        ids = tok(texts, padding="max_length", truncation=True, max_length=tok.model_max_length,
                  return_tensors="pt").input_ids.to(diff.device, non_blocking=True)
        return Conditioning(diff.text_encoder(ids)[0])

    def uncond(self, diff: Diffusion, empty: Conditioning) -> Conditioning:
        return empty

    def forward(self, diff: Diffusion, module: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance: float) -> torch.Tensor:
        from rewardtune.engine.pipeline import autocast, module_inputs

        x, emb = module_inputs(diff, module, x, cond.emb)
        with autocast(diff, module):
            return module(x, t, encoder_hidden_states=emb).sample.float()

    def save_lora(self, diff: Diffusion, layers: dict[str, torch.Tensor], meta: dict[str, Any], out_dir: str) -> None:
        from diffusers import StableDiffusionPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        StableDiffusionPipeline.save_lora_weights(out_dir, unet_lora_layers=convert_state_dict_to_diffusers(layers),
                                                  unet_lora_adapter_metadata=meta)


FAMILY = SDFamily()
