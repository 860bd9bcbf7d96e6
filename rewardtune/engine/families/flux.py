"""FLUX.1: FluxTransformer2DModel, CLIP-L (pooled) + T5 (sequence), flow matching, distilled guidance.

- Guidance is distilled: FLUX.1-dev takes the guidance scale as an input (`guidance_embeds`), one transformer call
  per step, no classifier-free batch; FLUX.1-schnell has no guidance input and ignores it.
- Latents stay [B, C, h, w] everywhere in the engine; the denoiser call packs them into 2x2 patches ([B, h/2 * w/2,
  4C]) with their position ids, and unpacks the prediction, as `FluxPipeline` does around its loop.
- The schedule is FluxPipeline's: sigmas linspace(1, 1/T, T), shifted by mu from the image token count.
- Flow matching itself (step, x0, re-noising, denoising pairs) is `sd3.FlowMatchFamily`'s.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rewardtune.engine.families import Conditioning, Schedule
from rewardtune.engine.families.sd3 import FlowMatchFamily, t5_max_length

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion


def pack(x: torch.Tensor) -> torch.Tensor:
    """[B, C, h, w] -> [B, (h/2)(w/2), 4C]: 2x2 patches as tokens (FluxPipeline._pack_latents)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), c * 4)


def unpack(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`pack`'s inverse, for latents of height h and width w."""
    b, _, c4 = x.shape
    return x.view(b, h // 2, w // 2, c4 // 4, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c4 // 4, h, w)


def image_ids(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Position ids of the packed tokens: (0, row, column) per 2x2 patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(h // 2)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


class FluxFamily(FlowMatchFamily):
    name = "flux"
    pipeline_class = "FluxPipeline"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    lora_targets: tuple[str, ...] = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj",
                                     "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out")
    max_sequence_length = 512  # FluxPipeline's default
    default_max_shift = 1.15

    def encode_text(self, diff: Diffusion, texts: list[str]) -> Conditioning:
        c = diff.components
        tok, clip = c["tokenizer"], c["text_encoder"]
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids.to(diff.device)
        pooled = clip(ids, output_hidden_states=False).pooler_output
        t5_tok, t5 = c["tokenizer_2"], c["text_encoder_2"]
        ids = t5_tok(texts, padding="max_length", max_length=t5_max_length(t5_tok, self.max_sequence_length),
                     truncation=True, return_tensors="pt").input_ids.to(diff.device)
        return Conditioning(t5(ids, output_hidden_states=False)[0], pooled)

    def uncond(self, diff: Diffusion, empty: Conditioning) -> Conditioning:
        return empty  # only used with true CFG, which FLUX.1's distilled guidance does not need

    def uses_cfg(self, guidance: float) -> bool:
        return False  # distilled guidance: the scale is the transformer's input, not a second batch

    def forward(self, diff: Diffusion, module: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance: float) -> torch.Tensor:
        from rewardtune.engine.pipeline import autocast, module_inputs

        assert cond.pooled is not None
        b, _, h, w = x.shape
        g = (torch.full([1], guidance, device=x.device, dtype=torch.float32).expand(b)
             if module.config.guidance_embeds else None)
        packed, emb, pooled = module_inputs(diff, module, pack(x), cond.emb, cond.pooled)
        txt_ids = torch.zeros(emb.shape[1], 3, device=x.device, dtype=emb.dtype)
        img_ids = image_ids(h, w, x.device, emb.dtype)
        with autocast(diff, module):
            out = module(hidden_states=packed, timestep=(t / 1000).expand(b), guidance=g, pooled_projections=pooled,
                         encoder_hidden_states=emb, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return unpack(out.float(), h, w)

    def schedule(self, diff: Diffusion, steps: int, latent_hw: tuple[int, int] | None = None) -> Schedule:
        sigmas = np.linspace(1.0, 1 / steps, steps)
        kw = self.schedule_kwargs(diff, steps, latent_hw)
        diff.scheduler.set_timesteps(steps, sigmas=sigmas, **kw)
        return Schedule(diff.scheduler.timesteps.clone(), steps, diff.scheduler.sigmas.clone())

    def image_seq_len(self, diff: Diffusion, latent_hw: tuple[int, int]) -> int:
        return (latent_hw[0] // 2) * (latent_hw[1] // 2)

    def latent_shape(self, diff: Diffusion, resolution: int) -> tuple[int, int, int]:
        h = 2 * (resolution // (diff.vae_scale * 2))
        return diff.denoiser.config.in_channels // 4, h, h

    def save_lora(self, diff: Diffusion, layers: dict[str, torch.Tensor], meta: dict[str, Any], out_dir: str) -> None:
        from diffusers import FluxPipeline

        FluxPipeline.save_lora_weights(out_dir, transformer_lora_layers=layers,
                                       transformer_lora_adapter_metadata=meta)


FAMILY = FluxFamily()
