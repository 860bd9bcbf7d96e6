"""Tiny SD-1.x-style pipeline: UNet2DConditionModel, AutoencoderKL, CLIP text encoder, DDIM scheduler."""
from __future__ import annotations

from pathlib import Path

MAX_LEN = 16
TEXT_HIDDEN = 32


def make_components(latent_size: int = 8):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rewardtune.zoo.tokenizers import TINY_CLIP_BOS, TINY_CLIP_EOS, TINY_CLIP_VOCAB, tiny_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8, norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=latent_size * 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=TINY_CLIP_VOCAB, hidden_size=TEXT_HIDDEN, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
        eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, projection_dim=32))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return dict(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(MAX_LEN),
                scheduler=scheduler)


def make_pipeline(latent_size: int = 8):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(**make_components(latent_size), safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)


def build(path: Path, seed: int) -> None:
    """Tiny SD-1.x pipeline with 8x8 latents (16x16 images)."""
    make_pipeline(8).save_pretrained(path)


def build_latent16(path: Path, seed: int) -> None:
    """Same architecture, 16x16 latents (32x32 images)."""
    make_pipeline(16).save_pretrained(path)
