"""Tiny FLUX.1-dev-architecture pipeline: a FluxTransformer2DModel with double- and single-stream blocks, RoPE and
guidance embedding, CLIP-L (pooled) and a tiny T5 (sequence), a 16-channel AutoencoderKL with shift factor, and
FLUX's dynamically shifted FlowMatchEulerDiscreteScheduler."""
from __future__ import annotations

from pathlib import Path

MAX_LEN = 16  # CLIP tokens (FLUX: 77)
T5_LEN = 16  # T5 tokens (FLUX.1-dev: 512)
CLIP_HIDDEN = 32  # pooled_projection_dim (FLUX: 768)
T5_DIM = 48  # joint_attention_dim (FLUX: 4096)
LATENT_CHANNELS = 16


def make_components(latent_size: int = 8, guidance_embeds: bool = True):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from rewardtune.zoo.tokenizers import (
        TINY_CLIP_BOS,
        TINY_CLIP_EOS,
        TINY_CLIP_VOCAB,
        tiny_clip_tokenizer,
        tiny_t5_tokenizer,
    )

    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=1, num_single_layers=2, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=T5_DIM, pooled_projection_dim=CLIP_HIDDEN,
        guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=32, sample_size=latent_size * 2, scaling_factor=0.3611,
        shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False)
    clip = CLIPTextModel(CLIPTextConfig(
        vocab_size=TINY_CLIP_VOCAB, hidden_size=CLIP_HIDDEN, intermediate_size=37, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
        eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, projection_dim=CLIP_HIDDEN))
    tok5 = tiny_t5_tokenizer(T5_LEN)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok5), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096)
    return dict(transformer=transformer, vae=vae, text_encoder=clip, text_encoder_2=t5,
                tokenizer=tiny_clip_tokenizer(MAX_LEN), tokenizer_2=tok5, scheduler=scheduler)


def make_pipeline(latent_size: int = 8, guidance_embeds: bool = True):
    from diffusers import FluxPipeline

    return FluxPipeline(**make_components(latent_size, guidance_embeds))


def build(path: Path, seed: int) -> None:
    """Tiny FLUX.1-dev pipeline (distilled guidance input) with 8x8 latents (16x16 images)."""
    make_pipeline(8).save_pretrained(path)


def build_schnell(path: Path, seed: int) -> None:
    """The same without a guidance input (as FLUX.1-schnell)."""
    make_pipeline(8, guidance_embeds=False).save_pretrained(path)
