"""Key mappings at the real checkpoints' sizes (built on the meta device: no memory, no weights)."""
from __future__ import annotations

import torch

from rewardtune.rewards.hpsv2 import OPEN_CLIP_ARCHS, hf_clip_config, open_clip_to_hf
from rewardtune.rewards.imagereward import blip_config, convert_state_dict
from rewardtune.zoo.hpsv2 import hf_to_open_clip
from rewardtune.zoo.imagereward import hf_to_imagereward


def test_hpsv2_vit_h14_shapes_round_trip():
    from transformers import CLIPModel

    with torch.device("meta"):
        model = CLIPModel(hf_clip_config(OPEN_CLIP_ARCHS["ViT-H-14"]))
    hf = model.state_dict()
    oc = hf_to_open_clip(hf)
    # open_clip's ViT-H-14 layout and sizes (986M parameters)
    assert oc["visual.conv1.weight"].shape == (1280, 3, 14, 14)
    assert oc["visual.positional_embedding"].shape == (257, 1280)
    assert oc["visual.proj"].shape == (1280, 1024) and oc["text_projection"].shape == (1024, 1024)
    assert oc["visual.transformer.resblocks.31.attn.in_proj_weight"].shape == (3 * 1280, 1280)
    assert oc["transformer.resblocks.23.attn.in_proj_weight"].shape == (3 * 1024, 1024)
    assert oc["token_embedding.weight"].shape == (49408, 1024) and oc["positional_embedding"].shape == (77, 1024)
    assert not any(k.startswith("visual.transformer.resblocks.32.") or k.startswith("transformer.resblocks.24.") for k in oc)
    n = sum(v.numel() for v in oc.values())
    assert 985e6 < n < 987e6, n
    back = open_clip_to_hf(oc)
    expected = {k for k in hf if not k.endswith("position_ids")}
    assert set(back) == expected
    assert all(back[k].shape == hf[k].shape for k in back)
    assert model.config.vision_config.num_attention_heads == 16 and model.config.vision_config.hidden_act == "gelu"


def test_imagereward_vit_l16_config_from_state_dict_shapes():
    from transformers import BlipForImageTextRetrieval

    med = {"vocab_size": 30524, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
           "num_attention_heads": 12, "max_position_embeddings": 512, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
           "encoder_width": 1024}
    z = torch.zeros
    shapes = {"blip.visual_encoder.cls_token": z(1, 1, 1024), "blip.visual_encoder.pos_embed": z(1, 197, 1024),
              "blip.visual_encoder.patch_embed.proj.weight": z(1024, 3, 16, 16),
              "blip.visual_encoder.blocks.0.mlp.fc1.weight": z(4096, 1024), "blip.vision_proj.weight": z(256, 1024)}
    shapes.update({f"blip.visual_encoder.blocks.{i}.norm1.weight": z(1024) for i in range(24)})
    cfg = blip_config(shapes, med, vision_heads=16)
    v, t = cfg.vision_config, cfg.text_config
    assert (v.hidden_size, v.num_hidden_layers, v.image_size, v.patch_size, v.intermediate_size) == (1024, 24, 224, 16, 4096)
    assert v.layer_norm_eps == 1e-6 and t.encoder_hidden_size == 1024 and t.vocab_size == 30524
    with torch.device("meta"):
        model = BlipForImageTextRetrieval(cfg)
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("itm_head")}
    orig = hf_to_imagereward(sd, {"layers.0.weight": z(1024, 768)})
    assert orig["blip.visual_encoder.blocks.23.attn.qkv.weight"].shape == (3072, 1024)
    assert orig["blip.text_encoder.encoder.layer.11.crossattention.self.key.weight"].shape == (768, 1024)
    blip, head = convert_state_dict(orig)
    assert set(blip) == {k for k in sd if not k.endswith("position_ids")} and set(head) == {"layers.0.weight"}
