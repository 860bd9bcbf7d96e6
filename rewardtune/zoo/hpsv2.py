"""Tiny twin of HPSv2: an open_clip-format checkpoint (`{'state_dict': ...}`) + open_clip_config.json + tokenizer.

The weights are written in open_clip's key layout (fused `attn.in_proj_*`, `[width, embed]` projections), so the
tiny twin goes through the same open_clip -> transformers mapping as the real HPS_v2*.pt files.
"""
from __future__ import annotations

import json
from pathlib import Path

TINY_OPEN_CLIP = {"embed_dim": 32,
                  "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 8, "patch_size": 4},
                  "text_cfg": {"context_length": 16, "vocab_size": 514, "width": 32, "heads": 4, "layers": 2}}
FILENAME = "HPS_v2_compressed.pt"


def hf_to_open_clip(sd: dict) -> dict:
    """Inverse of rewardtune.rewards.hpsv2.open_clip_to_hf (used to write checkpoints in the original layout)."""
    import re

    import torch

    out, qkv = {}, {}
    inv_block = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                 "self_attn.out_proj": "attn.out_proj"}
    simple = {"vision_model.embeddings.class_embedding": "visual.class_embedding",
              "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
              "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
              "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
              "text_model.embeddings.position_embedding.weight": "positional_embedding", "logit_scale": "logit_scale"}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        m = re.match(r"(vision_model|text_model)\.encoder\.layers\.(\d+)\.(.+)$", k)
        if m:
            pre = ("visual." if m.group(1) == "vision_model" else "") + f"transformer.resblocks.{m.group(2)}."
            rest = m.group(3)
            q = re.match(r"self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if q:
                qkv.setdefault(pre + "attn.in_proj_" + q.group(2), {})[q.group(1)] = v
                continue
            for a, b in inv_block.items():
                if rest.startswith(a + "."):
                    out[pre + b + rest[len(a):]] = v
                    break
            continue
        if k in simple:
            out[simple[k]] = v
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k.startswith("vision_model.pre_layrnorm."):
            out["visual.ln_pre." + k.split(".")[-1]] = v
        elif k.startswith("vision_model.post_layernorm."):
            out["visual.ln_post." + k.split(".")[-1]] = v
        elif k.startswith("text_model.final_layer_norm."):
            out["ln_final." + k.split(".")[-1]] = v
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def build(path: Path, seed: int) -> None:
    """Tiny open_clip-layout HPS checkpoint (2+2 layers, width 32, 32 px) with the byte-level CLIP tokenizer."""
    import torch
    from transformers import CLIPModel

    from rewardtune.rewards.hpsv2 import hf_clip_config
    from rewardtune.zoo.tokenizers import tiny_clip_tokenizer

    path = Path(path)
    model = CLIPModel(hf_clip_config(TINY_OPEN_CLIP))
    torch.save({"epoch": 1, "state_dict": hf_to_open_clip(model.state_dict())}, path / FILENAME)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}, indent=2))
    tiny_clip_tokenizer(TINY_OPEN_CLIP["text_cfg"]["context_length"]).save_pretrained(path)
