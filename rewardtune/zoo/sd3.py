"""Tiny SD3.5-architecture pipeline: an SD3Transformer2DModel (MMDiT with dual-attention and RMS QK-norm, as
SD3.5), CLIP-L and CLIP-G with projections, a tiny T5 encoder, a 16-channel AutoencoderKL with shift factor, and a
shifted FlowMatchEulerDiscreteScheduler."""
from __future__ import annotations

from pathlib import Path

MAX_LEN = 16  # CLIP tokens (SD3: 77)
T5_LEN = 16  # T5 tokens (SD3: 256 of the tokenizer's 512)
CLIP_HIDDEN = (16, 24)  # CLIP-L, CLIP-G (SD3: 768, 1280); pooled = their projections concatenated
T5_DIM = 48  # joint_attention_dim (SD3: 4096)
LATENT_CHANNELS = 16


def make_components(latent_size: int = 8):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from rewardtune.zoo.tokenizers import (
        TINY_CLIP_BOS,
        TINY_CLIP_EOS,
        TINY_CLIP_VOCAB,
        tiny_clip_tokenizer,
        tiny_t5_tokenizer,
    )

    transformer = SD3Transformer2DModel(
        sample_size=latent_size, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=8, num_attention_heads=4, joint_attention_dim=T5_DIM,
        caption_projection_dim=32, pooled_projection_dim=sum(CLIP_HIDDEN), pos_embed_max_size=latent_size,
        dual_attention_layers=(0,), qk_norm="rms_norm")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=LATENT_CHANNELS, norm_num_groups=32, sample_size=latent_size * 2, scaling_factor=1.5305,
        shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)

    def clip(hidden: int):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=TINY_CLIP_VOCAB, hidden_size=hidden, intermediate_size=37, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
            eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, projection_dim=hidden, hidden_act="gelu"))

    tok5 = tiny_t5_tokenizer(T5_LEN)
    t5 = T5EncoderModel(T5Config(vocab_size=len(tok5), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                 relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                                 dense_act_fn="gelu_new", is_gated_act=True, pad_token_id=0, eos_token_id=1,
                                 decoder_start_token_id=0))
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return dict(transformer=transformer, vae=vae, text_encoder=clip(CLIP_HIDDEN[0]), text_encoder_2=clip(CLIP_HIDDEN[1]),
                text_encoder_3=t5, tokenizer=tiny_clip_tokenizer(MAX_LEN), tokenizer_2=tiny_clip_tokenizer(MAX_LEN),
                tokenizer_3=tok5, scheduler=scheduler)


def make_pipeline(latent_size: int = 8):
    from diffusers import StableDiffusion3Pipeline

    return StableDiffusion3Pipeline(**make_components(latent_size))


def build(path: Path, seed: int) -> None:
    """Tiny SD3.5 pipeline with 8x8 latents (16x16 images)."""
    make_pipeline(8).save_pretrained(path)
