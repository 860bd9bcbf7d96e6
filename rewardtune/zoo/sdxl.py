"""Tiny SDXL-architecture pipeline: a UNet with text-time added conditioning, CLIP + CLIP-with-projection text
encoders, an AutoencoderKL that asks for float32 upcasting, and SDXL base's scheduler config."""
from __future__ import annotations

from pathlib import Path

MAX_LEN = 16
TEXT_HIDDEN = (32, 32)  # text_encoder, text_encoder_2 (SDXL: 768, 1280); the UNet sees their concatenation
POOLED = 32  # text_encoder_2's projection (SDXL: 1280)
TIME_EMBED = 8  # addition_time_embed_dim (SDXL: 256)


def make_components(latent_size: int = 8):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from rewardtune.zoo.tokenizers import TINY_CLIP_BOS, TINY_CLIP_EOS, TINY_CLIP_VOCAB, tiny_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=sum(TEXT_HIDDEN), addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + POOLED, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=latent_size * 2, scaling_factor=0.13025,
        force_upcast=True)

    def clip(cls, hidden: int, **kw):
        return cls(CLIPTextConfig(
            vocab_size=TINY_CLIP_VOCAB, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
            eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, **kw))

    # SDXL base ships an Euler scheduler whose config also carries DDIM's keys; the engine samples with DDIM
    scheduler = EulerDiscreteScheduler.from_config(dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading",
        prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, sample_max_value=1.0))
    return dict(unet=unet, vae=vae, text_encoder=clip(CLIPTextModel, TEXT_HIDDEN[0], projection_dim=POOLED),
                text_encoder_2=clip(CLIPTextModelWithProjection, TEXT_HIDDEN[1], projection_dim=POOLED),
                tokenizer=tiny_clip_tokenizer(MAX_LEN), tokenizer_2=tiny_clip_tokenizer(MAX_LEN), scheduler=scheduler)


def make_pipeline(latent_size: int = 8):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline(**make_components(latent_size), add_watermarker=False,
                                     force_zeros_for_empty_prompt=True)


def build(path: Path, seed: int) -> None:
    """Tiny SDXL pipeline with 8x8 latents (16x16 images)."""
    make_pipeline(8).save_pretrained(path)
