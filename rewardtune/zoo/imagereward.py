"""Tiny twin of ImageReward-v1.0 in the original checkpoint layout (ImageReward.pt + med_config.json) + tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

VISION = dict(width=32, depth=2, heads=4, patch=8, image_size=32)


def tiny_med_config(vocab_size: int) -> dict:
    """BLIP's med_config.json (BERT + cross-attention), shrunk."""
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1, "hidden_size": 32, "initializer_range": 0.02, "intermediate_size": 37,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 64, "model_type": "bert", "num_attention_heads": 4,
            "num_hidden_layers": 2, "pad_token_id": 0, "type_vocab_size": 2, "vocab_size": vocab_size,
            "encoder_width": VISION["width"], "add_cross_attention": True}


def hf_to_imagereward(blip_sd: dict, head_sd: dict) -> dict:
    """Inverse of rewardtune.rewards.imagereward.convert_state_dict (writes the original key layout)."""
    import re

    out = {}
    for k, v in blip_sd.items():
        if k.startswith("vision_model."):
            k = k[len("vision_model."):]
            m = re.match(r"encoder\.layers\.(\d+)(\..+)$", k)
            if m:
                rest = m.group(2)
                for a, b in [(".layer_norm1.", ".norm1."), (".layer_norm2.", ".norm2."),
                             (".self_attn.qkv.", ".attn.qkv."), (".self_attn.projection.", ".attn.proj.")]:
                    rest = rest.replace(a, b)
                k = f"blocks.{m.group(1)}{rest}"
            else:
                for a, b in [("embeddings.class_embedding", "cls_token"), ("embeddings.position_embedding", "pos_embed"),
                             ("embeddings.patch_embedding.", "patch_embed.proj."), ("post_layernorm.", "norm.")]:
                    if k.startswith(a):
                        k = b + k[len(a):]
                        break
            out["blip.visual_encoder." + k] = v
        elif k.startswith(("text_encoder.", "vision_proj.", "text_proj.")) and not k.endswith("position_ids"):
            out["blip." + k] = v
    for k, v in head_sd.items():
        out["mlp." + k] = v
    return out


def redraw(module, gain: float = 1.5) -> None:
    """Re-draw every weight matrix at std gain/sqrt(fan_in) and biases at std 0.1 (LayerNorms untouched)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name.lower():
                continue
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * gain / p[0].numel() ** 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build(path: Path, seed: int) -> None:
    """Tiny ImageReward: 2-layer ViT (32 px, patch 8), 2-layer BERT with cross-attention, head 32-1024-...-1.

    All matrices are drawn at std 1.5/sqrt(fan_in): image-reward's own init (and BERT's std 0.02) gives a
    near-constant score, which would hide a wrong implementation.
    """
    import torch
    from transformers import BertTokenizer

    from rewardtune.rewards.imagereward import RewardHead, blip_config
    from rewardtune.zoo.tokenizers import train_wordpiece_vocab

    path = Path(path)
    vocab = train_wordpiece_vocab(200)
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab={t: i for i, t in enumerate(vocab)}).save_pretrained(path)
    med = tiny_med_config(len(vocab))
    w, p, n = VISION["width"], VISION["patch"], (VISION["image_size"] // VISION["patch"]) ** 2 + 1
    shape_sd = {"blip.visual_encoder.cls_token": torch.zeros(1, 1, w),
                "blip.visual_encoder.pos_embed": torch.zeros(1, n, w),
                "blip.visual_encoder.patch_embed.proj.weight": torch.zeros(w, 3, p, p),
                "blip.visual_encoder.blocks.0.mlp.fc1.weight": torch.zeros(4 * w, w),
                "blip.vision_proj.weight": torch.zeros(16, w)}
    shape_sd.update({f"blip.visual_encoder.blocks.{i}.norm1.weight": torch.zeros(w) for i in range(VISION["depth"])})
    from transformers import BlipForImageTextRetrieval

    model = BlipForImageTextRetrieval(blip_config(shape_sd, med, VISION["heads"]))
    redraw(model)
    head = RewardHead(med["hidden_size"])
    redraw(head)
    torch.save(hf_to_imagereward(model.state_dict(), head.state_dict()), path / "ImageReward.pt")
    (path / "med_config.json").write_text(json.dumps(med, indent=2))
