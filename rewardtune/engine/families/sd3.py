"""SD3 / SD3.5: SD3Transformer2DModel, CLIP-L + CLIP-G (+ an optional T5), flow matching.

Flow matching (shared with FLUX, `FlowMatchFamily`): x_t = (1 - sigma) x0 + sigma eps and the model predicts the
velocity v = eps - x0. `FlowMatchEulerDiscreteScheduler` gives the sigmas (with its shift, or the resolution-
dependent shift mu when `use_dynamic_shifting`); the Euler step is x_next = x + (sigma_next - sigma) v, written out
here so it is differentiable, with the x0 prediction x0 = x - sigma v (ReFL's stop step, DRaFT-LV's one step).
The denoising loss regresses v on eps - x0 at training sigmas drawn uniformly over the scheduler's training
timesteps (diffusers' SD3/FLUX training scripts with weighting 'none').

Prompts as `StableDiffusion3Pipeline` encodes them: each CLIP's penultimate hidden states, concatenated on the
feature axis and zero-padded to T5's width, then T5's last hidden states appended on the sequence axis (zeros when
the pipeline has no T5); pooled = both CLIPs' projections, concatenated. The empty prompt is encoded like any other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rewardtune.engine.families import Conditioning, Schedule, vae_scale_shift, vae_unscale_shift

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion


def calculate_shift(image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
                    max_shift: float = 1.15) -> float:
    """The resolution-dependent shift mu of dynamically shifted schedules (linear in the image token count)."""
    m = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * m + (base_shift - m * base_seq_len)


class FlowMatchFamily:
    """What SD3 and FLUX share: the flow-matching schedule, its Euler step, re-noising and denoising pairs."""

    flow = True
    denoiser_name = "transformer"
    shard_blocks = ("transformer_blocks", "single_transformer_blocks")
    default_max_shift = 1.16  # what the pipeline assumes when the scheduler config has no max_shift

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {}

    def setup(self, diff: Diffusion, pipe: Any) -> None:
        """Nothing to adjust after loading (SDXL's VAE upcast is the one family that needs this)."""

    def make_scheduler(self, config: Any) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(config)

    def sdpa_modules(self) -> tuple[str, ...]:
        return ("vae",)  # the transformers keep their own joint-attention processors

    def timestep(self, t: int | float, device: torch.device) -> torch.Tensor:
        return torch.full((1,), float(t), device=device, dtype=torch.float32)

    def image_seq_len(self, diff: Diffusion, latent_hw: tuple[int, int]) -> int:
        p = diff.denoiser.config.patch_size
        return (latent_hw[0] // p) * (latent_hw[1] // p)

    def schedule_kwargs(self, diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None) -> dict[str, Any]:
        cfg = diff.scheduler.config
        if not cfg.get("use_dynamic_shifting", False):
            return {}
        if latent_hw is None:
            raise ValueError("a dynamically shifted flow schedule depends on the image size: pass latent_hw")
        return {"mu": calculate_shift(self.image_seq_len(diff, latent_hw), cfg.get("base_image_seq_len", 256),
                                      cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                                      cfg.get("max_shift", self.default_max_shift))}

    def schedule(self, diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None = None) -> Schedule:
        diff.scheduler.set_timesteps(steps, **self.schedule_kwargs(diff, steps, latent_hw))
        return Schedule(diff.scheduler.timesteps.clone(), steps, diff.scheduler.sigmas.clone())

    def _sigma(self, sched: Schedule, i: int, device: torch.device) -> torch.Tensor:
        assert sched.sigmas is not None
        return sched.sigmas[i].to(device=device, dtype=torch.float32)

    def step(self, diff: Diffusion, sched: Schedule, i: int, x: torch.Tensor, out: torch.Tensor, eta: float = 0.0,
             noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Euler x_i -> x_{i+1} = x + (sigma_{i+1} - sigma_i) v; returns (x_next, x0 = x - sigma_i v)."""
        if eta > 0:
            raise ValueError("flow-matching models sample with the deterministic Euler step: set sampling.eta to 0")
        sigma, sigma_next = self._sigma(sched, i, x.device), self._sigma(sched, i + 1, x.device)
        return x + (sigma_next - sigma) * out, x - sigma * out

    def renoise(self, diff: Diffusion, sched: Schedule, i: int, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x0 moved back along the flow path to step i: (1 - sigma_i) x0 + sigma_i eps."""
        sigma = self._sigma(sched, i, x0.device)
        return (1 - sigma) * x0 + sigma * eps

    def num_train_timesteps(self, diff: Diffusion) -> int:
        return int(diff.scheduler.config.num_train_timesteps)

    def _train_sigmas(self, diff: Diffusion) -> torch.Tensor:
        """The scheduler's training sigmas (as constructed: shifted by `shift` unless dynamically shifted)."""
        if "train_sigmas" not in diff.extras:
            diff.extras["train_sigmas"] = self.make_scheduler(diff.scheduler.config).sigmas.to(torch.float32)
        return diff.extras["train_sigmas"]

    def training_pair(self, diff: Diffusion, x0: torch.Tensor, noise: torch.Tensor,
                      index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sigma = self._train_sigmas(diff).to(x0.device)[index.to(x0.device)].view(-1, 1, 1, 1)
        x_t = (1 - sigma) * x0 + sigma * noise
        return x_t, sigma.view(-1) * self.num_train_timesteps(diff), noise - x0

    def init_noise_sigma(self, diff: Diffusion) -> float:
        return 1.0  # x at sigma = 1 is pure noise

    def to_vae(self, diff: Diffusion, latents: torch.Tensor) -> torch.Tensor:
        return vae_scale_shift(diff.vae, latents)

    def from_vae(self, diff: Diffusion, z: torch.Tensor) -> torch.Tensor:
        return vae_unscale_shift(diff.vae, z)


def clip_hidden(tok: Any, enc: Any, texts: list[str], max_length: int, device: torch.device
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(penultimate hidden states, projected pooled embedding) of a CLIPTextModelWithProjection."""
    ids = tok(texts, padding="max_length", max_length=max_length, truncation=True,
              return_tensors="pt").input_ids.to(device)
    out = enc(ids, output_hidden_states=True)
    return out.hidden_states[-2], out[0]


def t5_hidden(tok: Any, enc: Any, texts: list[str], max_length: int, device: torch.device) -> torch.Tensor:
    ids = tok(texts, padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
              return_tensors="pt").input_ids.to(device)
    return enc(ids)[0]


def t5_max_length(tok: Any, default: int) -> int:
    """The pipeline's `max_sequence_length` default, within what the tokenizer allows."""
    return min(default, int(getattr(tok, "model_max_length", default) or default))


class SD3Family(FlowMatchFamily):
    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    lora_targets: tuple[str, ...] = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
                                     "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
    max_sequence_length = 256  # StableDiffusion3Pipeline's default

    def encode_text(self, diff: Diffusion, texts: list[str]) -> Conditioning:
        c = diff.components
        n = c["tokenizer"].model_max_length  # the pipeline uses the first tokenizer's length for both CLIPs
        e1, p1 = clip_hidden(c["tokenizer"], c["text_encoder"], texts, n, diff.device)
        e2, p2 = clip_hidden(c["tokenizer_2"], c["text_encoder_2"], texts, n, diff.device)
        clip = torch.cat([e1, e2.to(e1.dtype)], dim=-1)
        t5_tok, t5 = c.get("tokenizer_3"), c.get("text_encoder_3")
        if t5 is None:
            length = self.max_sequence_length if t5_tok is None else t5_max_length(t5_tok, self.max_sequence_length)
            t5_emb = torch.zeros((len(texts), length, diff.denoiser.config.joint_attention_dim), device=diff.device,
                                 dtype=clip.dtype)
        else:
            t5_emb = t5_hidden(t5_tok, t5, texts, t5_max_length(t5_tok, self.max_sequence_length), diff.device)
        clip = torch.nn.functional.pad(clip, (0, t5_emb.shape[-1] - clip.shape[-1]))
        return Conditioning(torch.cat([clip, t5_emb.to(clip.dtype)], dim=-2), torch.cat([p1, p2.to(p1.dtype)], dim=-1))

    def uncond(self, diff: Diffusion, empty: Conditioning) -> Conditioning:
        return empty

    def uses_cfg(self, guidance: float) -> bool:
        return guidance > 1.0

    def forward(self, diff: Diffusion, module: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance: float) -> torch.Tensor:
        from rewardtune.engine.pipeline import autocast, module_inputs

        assert cond.pooled is not None
        x, emb, pooled = module_inputs(diff, module, x, cond.emb, cond.pooled)
        with autocast(diff, module):
            return module(hidden_states=x, timestep=t.expand(x.shape[0]), encoder_hidden_states=emb,
                          pooled_projections=pooled, return_dict=False)[0].float()

    def latent_shape(self, diff: Diffusion, resolution: int) -> tuple[int, int, int]:
        h = resolution // diff.vae_scale
        return diff.denoiser.config.in_channels, h, h

    def save_lora(self, diff: Diffusion, layers: dict[str, torch.Tensor], meta: dict[str, Any], out_dir: str) -> None:
        from diffusers import StableDiffusion3Pipeline

        StableDiffusion3Pipeline.save_lora_weights(out_dir, transformer_lora_layers=layers,
                                                   transformer_lora_adapter_metadata=meta)


FAMILY = SD3Family()
