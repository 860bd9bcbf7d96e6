"""Tiny SAM twin: transformers SamModel (64 px input, 8x8 embedding grid) + the processor config SAM ships."""
from __future__ import annotations

import json
from pathlib import Path

IMAGE_SIZE = 64
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def make_sam(image_size: int = IMAGE_SIZE):
    from transformers import SamConfig, SamModel

    cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=16, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=32, image_size=image_size, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
    )
    return SamModel(cfg)


def rescale_init(model, gain: float = 2.0) -> None:
    """Re-draw linear/conv weights with std gain/sqrt(fan_in): SAM's own init (std 0.02) makes a 2-layer twin
    output logits and IoU predictions of ~1e-4, so every filter would see the same constant-like masks."""
    import torch

    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.Linear | torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                w = mod.weight
                fan_in = w.shape[0] if isinstance(mod, torch.nn.ConvTranspose2d) else w[0].numel()
                w.normal_(0.0, gain / fan_in ** 0.5)


def write_sam_preprocessor(path: Path, image_size: int = IMAGE_SIZE) -> None:
    """preprocessor_config.json in the layout of the hub SAM checkpoints."""
    (Path(path) / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SamImageProcessor", "processor_class": "SamProcessor", "do_resize": True,
        "size": {"longest_edge": image_size}, "resample": 2, "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "do_pad": True,
        "pad_size": {"height": image_size, "width": image_size}, "mask_size": {"longest_edge": image_size // 4},
        "do_convert_rgb": True}, indent=2))


def build(path: Path, seed: int) -> None:
    """Tiny SAM: 2-layer ViT encoder (64 px, patch 8), 2-layer two-way mask decoder, hidden 32."""
    model = make_sam()
    rescale_init(model)
    model.save_pretrained(path)
    write_sam_preprocessor(path)
