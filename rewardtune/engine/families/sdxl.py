"""SDXL: UNet2DConditionModel with added conditioning, two CLIP text encoders, DDIM.

- Prompts: both encoders' penultimate hidden states, concatenated on the feature axis; the pooled embedding is the
  second encoder's projection (CLIPTextModelWithProjection).
- The empty prompt is all zeros when the pipeline says `force_zeros_for_empty_prompt` (SDXL base does), as
  `StableDiffusionXLPipeline` does without a negative prompt.
- Micro-conditioning: add_time_ids = (original size, crop top-left, target size) = (H, W, 0, 0, H, W) of the
  sampled image, as the pipeline's defaults give.
- fp16: SDXL's VAE overflows in float16 (`force_upcast` in its config); it is loaded in float32 and kept out of
  autocast (`pipeline.load_diffusion`), so decoding under gradient stays finite.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from rewardtune.engine.families import Conditioning
from rewardtune.engine.families.sd import DDIMFamily

if TYPE_CHECKING:
    from rewardtune.engine.pipeline import Diffusion


class SDXLFamily(DDIMFamily):
    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")

    def pipeline_kwargs(self) -> dict[str, Any]:
        return {"add_watermarker": False}

    def setup(self, diff: Diffusion, pipe: Any) -> None:
        diff.extras["force_zeros_for_empty_prompt"] = bool(getattr(pipe.config, "force_zeros_for_empty_prompt",
                                                                   True))
        vae = diff.vae
        if next(vae.parameters()).dtype == torch.float16 and getattr(vae.config, "force_upcast", False):
            vae.to(torch.float32)  # SDXL's VAE overflows in float16 (what the pipeline's upcast_vae works around)
            diff.no_autocast.add(id(vae))

    def encode_text(self, diff: Diffusion, texts: list[str]) -> Conditioning:
        embs, pooled = [], None
        for enc_name, tok_name in zip(self.text_encoders, self.tokenizers, strict=True):
            tok, enc = diff.components[tok_name], diff.components[enc_name]
            ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(diff.device)
            out = enc(ids, output_hidden_states=True)
            if pooled is None and out[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
                pooled = out[0]
            embs.append(out.hidden_states[-2])
        assert pooled is not None, "SDXL's second text encoder must be a CLIPTextModelWithProjection"
        return Conditioning(torch.concat(embs, dim=-1), pooled)

    def uncond(self, diff: Diffusion, empty: Conditioning) -> Conditioning:
        if diff.extras.get("force_zeros_for_empty_prompt", True):
            assert empty.pooled is not None
            return Conditioning(torch.zeros_like(empty.emb), torch.zeros_like(empty.pooled))
        return empty

    def forward(self, diff: Diffusion, module: Any, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                guidance: float) -> torch.Tensor:
        from rewardtune.engine.pipeline import autocast, module_inputs

        h, w = x.shape[-2] * diff.vae_scale, x.shape[-1] * diff.vae_scale
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.emb.dtype, device=x.device).repeat(x.shape[0], 1)
        assert cond.pooled is not None
        x, emb, pooled, time_ids = module_inputs(diff, module, x, cond.emb, cond.pooled, time_ids)
        with autocast(diff, module):
            return module(x, t, encoder_hidden_states=emb,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample.float()

    def save_lora(self, diff: Diffusion, layers: dict[str, torch.Tensor], meta: dict[str, Any], out_dir: str) -> None:
        from diffusers import StableDiffusionXLPipeline
        from diffusers.utils import convert_state_dict_to_diffusers

        StableDiffusionXLPipeline.save_lora_weights(
            out_dir, unet_lora_layers=convert_state_dict_to_diffusers(layers), unet_lora_adapter_metadata=meta)


FAMILY = SDXLFamily()
