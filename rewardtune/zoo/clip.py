"""Tiny CLIP twins (transformers CLIPModel + tokenizer + image processor config) for clip-family rewards."""
from __future__ import annotations

from pathlib import Path

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_SIZE = 32
MAX_LEN = 16


def make_clip(image_size: int = IMAGE_SIZE, projection_dim: int = 32):
    from transformers import CLIPConfig, CLIPModel

    from rewardtune.zoo.tokenizers import TINY_CLIP_BOS, TINY_CLIP_EOS, TINY_CLIP_VOCAB

    cfg = CLIPConfig(
        text_config=dict(vocab_size=TINY_CLIP_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=TINY_CLIP_BOS,
                         eos_token_id=TINY_CLIP_EOS, pad_token_id=TINY_CLIP_EOS, projection_dim=projection_dim),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=image_size, patch_size=4, projection_dim=projection_dim),
        projection_dim=projection_dim,
    )
    return CLIPModel(cfg)


def save_clip_dir(model, path: Path, image_size: int = IMAGE_SIZE) -> None:
    """Write model + tokenizer + preprocessor_config.json, as a hub CLIP checkpoint directory has them."""
    import json

    from rewardtune.zoo.tokenizers import tiny_clip_tokenizer

    model.save_pretrained(path)
    tiny_clip_tokenizer(MAX_LEN).save_pretrained(path)
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": image_size},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(OPENAI_MEAN),
        "image_std": list(OPENAI_STD), "do_convert_rgb": True}, indent=2))


def build(path: Path, seed: int) -> None:
    """Tiny CLIP: 2-layer ViT (32px, patch 4) and 2-layer text tower, projection 32."""
    save_clip_dir(make_clip(), path)
