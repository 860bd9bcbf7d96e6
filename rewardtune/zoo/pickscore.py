"""Tiny twin of PickScore: a CLIP shaped like laion's ViT-H/14 (GELU, not OpenAI's quick-GELU), its own seed."""
from __future__ import annotations

from pathlib import Path


def build(path: Path, seed: int) -> None:
    """Tiny GELU CLIP (2+2 layers, width 32, 32 px, projection 24) + byte-level CLIP tokenizer + processor config."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from rewardtune.zoo.clip import IMAGE_SIZE, MAX_LEN, save_clip_dir
    from rewardtune.zoo.imagereward import redraw
    from rewardtune.zoo.tokenizers import TINY_CLIP_BOS, TINY_CLIP_EOS, TINY_CLIP_VOCAB

    torch.manual_seed(seed + 17)  # not the zoo:clip weights
    cfg = CLIPConfig(
        text_config=dict(vocab_size=TINY_CLIP_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
                         eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, hidden_act="gelu", projection_dim=24),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=IMAGE_SIZE, patch_size=4, hidden_act="gelu", projection_dim=24),
        projection_dim=24)
    model = CLIPModel(cfg)
    redraw(model)  # std 1.5/sqrt(fan_in): CLIP's 0.02 init scores every tiny image almost the same
    save_clip_dir(model, path)
