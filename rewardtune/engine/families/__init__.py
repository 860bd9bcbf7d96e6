"""Model families: everything that differs between SD 1.x/2.x, SDXL, SD3/SD3.5 and FLUX.1, behind one seam.

The sampler, the methods and the trainer call a `ModelFamily` and never ask which one it is. A family owns:

- loading: the diffusers pipeline class, its components, the scheduler the engine steps with, the LoRA target
  modules, and exporting (LoRA in the pipeline's own format, or the full denoiser);
- prompt encoding into a `Conditioning` (sequence embeddings, plus pooled embeddings where the model takes them),
  and the unconditional branch of classifier-free guidance made from the empty prompt's;
- the denoiser call (extra conditioning such as SDXL's add_time_ids or FLUX's guidance, text and image ids and
  latent packing stays inside it);
- the schedule and its step in differentiable form with the x0 prediction, re-noising (DRaFT-LV), and the
  denoising loss's noisy input and target;
- latent shapes and the VAE's scaling and shift.

One file per family, registered by name in `FAMILIES`: `sd` (sd1, sd2), `sdxl`, `sd3`, `flux`. A new family is one
file implementing `ModelFamily` plus one line in `FAMILIES` (and its name in the spec's `model.family`).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion

#: spec name -> "module:attribute" of the family object (imported on first use)
FAMILIES: dict[str, str] = {
    "sd1": "rewardtune.engine.families.sd:FAMILY",
    "sd2": "rewardtune.engine.families.sd:FAMILY",
    "sdxl": "rewardtune.engine.families.sdxl:FAMILY",
    "sd3": "rewardtune.engine.families.sd3:FAMILY",
    "flux": "rewardtune.engine.families.flux:FAMILY",
}


@dataclass(frozen=True)
class Conditioning:
    """What the denoiser is conditioned on for a batch of prompts: per-token embeddings [B, S, D] and, for the
    families that take them, pooled embeddings [B, P]. Rows follow the batch (for CFG: [uncond; cond])."""

    emb: torch.Tensor
    pooled: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.emb.shape[0])

    def expand(self, n: int) -> Conditioning:
        """A one-row conditioning repeated n times (a view: no copy)."""
        return Conditioning(self.emb.expand(n, -1, -1),
                            None if self.pooled is None else self.pooled.expand(n, -1))

    def rows(self, index: Any) -> Conditioning:
        return Conditioning(self.emb[index], None if self.pooled is None else self.pooled[index])

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(self.emb.to(device), None if self.pooled is None else self.pooled.to(device))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in (("emb", self.emb), ("pooled", self.pooled)) if v is not None}

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        pooled = None if parts[0].pooled is None else torch.cat([p.pooled for p in parts])  # type: ignore[misc]
        return Conditioning(torch.cat([p.emb for p in parts]), pooled)


@dataclass(frozen=True)
class Schedule:
    """The steps of one sampling call. `timesteps[i]` is what the denoiser is given at step i (DDIM's integer
    timestep; for flow matching sigma * 1000); flow schedules also carry `sigmas` (T + 1 values, the last 0)."""

    timesteps: torch.Tensor
    steps: int
    sigmas: torch.Tensor | None = None

    def t(self, i: int) -> int | float:
        v = self.timesteps[i]
        return int(v) if not v.is_floating_point() else float(v)


class ModelFamily(Protocol):
    """The seam between the engine and one kind of diffusion model. Methods take the loaded `Diffusion` first."""

    name: str
    pipeline_class: str  # the diffusers pipeline class it loads and exports for
    denoiser_name: str  # "unet" or "transformer": the pipeline component trained, and its export folder
    text_encoders: tuple[str, ...]  # pipeline components that encode prompts (frozen)
    tokenizers: tuple[str, ...]
    lora_targets: tuple[str, ...]  # default LoRA target modules of the denoiser
    shard_blocks: tuple[str, ...]  # the denoiser's block lists, each block one FSDP unit (`train.fsdp`)
    flow: bool  # a flow-matching model (velocity prediction, sigma schedule)

    # ---- loading
    def pipeline_kwargs(self) -> dict[str, Any]: ...
    def make_scheduler(self, config: Any) -> Any: ...
    def sdpa_modules(self) -> tuple[str, ...]: ...
    def setup(self, diff: Diffusion, pipe: Any) -> None: ...

    # ---- prompts
    def encode_text(self, diff: Diffusion, texts: list[str]) -> Conditioning: ...
    def uncond(self, diff: Diffusion, empty: Conditioning) -> Conditioning: ...
    def uses_cfg(self, guidance: float) -> bool: ...

    # ---- the denoiser
    def timestep(self, t: int | float, device: torch.device) -> torch.Tensor: ...
    def forward(self, diff: Diffusion, module: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance: float) -> torch.Tensor: ...

    # ---- schedule
    def schedule(self, diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None) -> Schedule: ...
    def step(self, diff: Diffusion, sched: Schedule, i: int, x: torch.Tensor, out: torch.Tensor, eta: float = 0.0,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]: ...
    def renoise(self, diff: Diffusion, sched: Schedule, i: int, x0: torch.Tensor,
                eps: torch.Tensor) -> torch.Tensor: ...
    def num_train_timesteps(self, diff: Diffusion) -> int: ...
    def training_pair(self, diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor,
                      index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...

    # ---- latents
    def latent_shape(self, diff: Diffusion, resolution: int) -> tuple[int, int, int]: ...
    def init_noise_sigma(self, diff: Diffusion) -> float: ...
    def to_vae(self, diff: Diffusion, latents: torch.Tensor) -> torch.Tensor: ...
    def from_vae(self, diff: Diffusion, z: torch.Tensor) -> torch.Tensor: ...

    # ---- export
    def save_lora(self, diff: Diffusion, layers: dict[str, torch.Tensor], meta: dict[str, Any],
                  out_dir: str) -> None: ...


def get_family(name: str) -> ModelFamily:
    """The family registered under a spec name (`sd1`, `sd2`, `sdxl`, `sd3`, `flux`)."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family '{name}'; known: {', '.join(FAMILIES)}")
    module, _, attr = FAMILIES[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def family_names_for_pipeline(pipeline_class: str) -> list[str]:
    """Spec names whose family loads `pipeline_class` (e.g. StableDiffusionPipeline -> sd1, sd2)."""
    return [n for n in FAMILIES if get_family(n).pipeline_class == pipeline_class]


def vae_scale_shift(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Latents as the denoiser sees them -> the VAE decoder's input: / scaling_factor, then + shift_factor."""
    z = latents / vae.config.scaling_factor
    if getattr(vae.config, "shift_factor", None):
        z = z + vae.config.shift_factor
    return z


def vae_unscale_shift(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """`vae_scale_shift`'s inverse: the VAE encoder's latent -> latents as the denoiser sees them."""
    if getattr(vae.config, "shift_factor", None):
        z = z - vae.config.shift_factor
    return z * vae.config.scaling_factor
