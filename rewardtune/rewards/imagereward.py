"""ImageReward-v1.0 (Xu et al. 2023) on transformers' BLIP classes.

The checkpoint (THUDM/ImageReward: ImageReward.pt + med_config.json) is a plain state dict of image-reward's
`ImageReward` module: `blip.visual_encoder.*` (a timm-style ViT-L/16), `blip.text_encoder.*` (BERT with
cross-attention, same key names as transformers' BlipTextModel) and `mlp.layers.*`. `convert_state_dict` maps it
onto `BlipForImageTextRetrieval`; the vision tower uses LayerNorm eps 1e-6 as BLIP's ViT does.

Score, as `ImageReward.score`: the text is tokenised with BERT (uncased) padded/truncated to 35 tokens and
cross-attends to the image tokens; the [CLS] feature goes through the head 768-1024-128-64-16-1 (no activations),
then `(r - 0.16717362830052426) / 1.0333394966054072`. Image preprocessing: torchvision Resize(224, bicubic),
CenterCrop(224), CLIP mean/std, done in torch.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from rewardtune.rewards._util import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    find_file,
    load_tokenizer,
    load_torch_checkpoint,
    quiet_transformers,
)
from rewardtune.rewards._weights import TOKENIZER_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward
from rewardtune.rewards.preprocess import preprocess

REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072


class RewardHead(nn.Module):
    """image-reward's MLP: same layout (and so the same `layers.N` keys), no activations."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


_VIS = [("cls_token", "embeddings.class_embedding"), ("pos_embed", "embeddings.position_embedding"),
        ("patch_embed.proj.", "embeddings.patch_embedding."), ("norm.", "post_layernorm.")]
_VIS_BLOCK = [(".norm1.", ".layer_norm1."), (".norm2.", ".layer_norm2."), (".attn.qkv.", ".self_attn.qkv."),
              (".attn.proj.", ".self_attn.projection.")]


def convert_state_dict(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """image-reward state dict -> (BlipForImageTextRetrieval state dict, RewardHead state dict)."""
    blip, head = {}, {}
    for k, v in sd.items():
        if k.startswith("mlp."):
            head[k[len("mlp."):]] = v
            continue
        if not k.startswith("blip.") or k.endswith("position_ids"):
            continue
        k = k[len("blip."):]
        if k.startswith("visual_encoder."):
            k = k[len("visual_encoder."):]
            m = re.match(r"blocks\.(\d+)(\..+)$", k)
            if m:
                rest = m.group(2)
                for a, b in _VIS_BLOCK:
                    rest = rest.replace(a, b)
                k = f"encoder.layers.{m.group(1)}{rest}"
            else:
                for a, b in _VIS:
                    if k.startswith(a):
                        k = b + k[len(a):]
                        break
            k = "vision_model." + k
        blip[k] = v
    return blip, head


def blip_config(sd: dict[str, torch.Tensor], med: dict, vision_heads: int):
    """BlipConfig for an image-reward state dict: vision sizes read off the weights, text from med_config."""
    from transformers import BlipConfig

    vw = sd["blip.visual_encoder.cls_token"].shape[-1]
    depth = len({k.split(".")[3] for k in sd if k.startswith("blip.visual_encoder.blocks.")})
    patch = sd["blip.visual_encoder.patch_embed.proj.weight"].shape[-1]
    side = math.isqrt(sd["blip.visual_encoder.pos_embed"].shape[1] - 1) * patch
    inter = sd["blip.visual_encoder.blocks.0.mlp.fc1.weight"].shape[0]
    vocab = med["vocab_size"]
    special = {k: (v if v < vocab else None) for k, v in (("bos_token_id", 30522), ("sep_token_id", 102), ("eos_token_id", 2))}
    return BlipConfig(
        vision_config=dict(hidden_size=vw, intermediate_size=inter, num_hidden_layers=depth,
                           num_attention_heads=vision_heads, image_size=side, patch_size=patch, layer_norm_eps=1e-6,
                           hidden_act="gelu"),
        text_config=dict(vocab_size=med["vocab_size"], hidden_size=med["hidden_size"],
                         intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
                         num_attention_heads=med["num_attention_heads"],
                         max_position_embeddings=med["max_position_embeddings"], encoder_hidden_size=vw,
                         layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"),
                         pad_token_id=med.get("pad_token_id", 0), **special),
        image_text_hidden_size=sd["blip.vision_proj.weight"].shape[0],
    )


def load_imagereward(sd: dict[str, torch.Tensor], med: dict, vision_heads: int = 16):
    """(BlipForImageTextRetrieval, RewardHead) with the converted weights; fails on any unmapped backbone key."""
    from transformers import BlipForImageTextRetrieval

    with quiet_transformers():
        model = BlipForImageTextRetrieval(blip_config(sd, med, vision_heads))
    conv, head_sd = convert_state_dict(sd)
    missing, unexpected = model.load_state_dict(conv, strict=False)
    needed = [k for k in missing if k.startswith(("vision_model.", "text_encoder.")) and not k.endswith("position_ids")]
    if needed or unexpected:
        raise ValueError(f"ImageReward key mapping incomplete: missing {needed[:8]}, unexpected {unexpected[:8]}")
    head = RewardHead(head_sd["layers.0.weight"].shape[1])
    head.load_state_dict(head_sd)
    return model, head


class ImageReward(Reward):
    """ImageReward-v1.0: BLIP image-text features -> preference MLP, normalised."""

    name = "imagereward"
    differentiable = True
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "THUDM/ImageReward", revision: str | None = None, filename: str = "ImageReward.pt",
                 med_config: str = "med_config.json", tokenizer: str | None = "google-bert/bert-base-uncased",
                 vision_heads: int = 16, max_length: int = 35, image_size: int = 224,
                 mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 interpolation: str = "bicubic", crop_rounding: str = "round",
                 *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", max_batch_size: int = 32):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.weights, self.revision, self.filename, self.med_config = weights, revision, filename, med_config
        self.tokenizer_ref, self.vision_heads, self.max_length = tokenizer, int(vision_heads), int(max_length)
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_rounding = interpolation, crop_rounding

    def _load(self) -> list[torch.nn.Module]:
        d = resolve_weights(self.weights, self.revision, what=self.name, needs=((self.filename,), (self.med_config,)))
        sd = load_torch_checkpoint(find_file(d, self.filename, self.name))
        med = json.loads(find_file(d, self.med_config, self.name).read_text())
        model, head = load_imagereward(sd, med, self.vision_heads)
        self.vision = model.vision_model.to(self.device, self.dtype)
        self.text = model.text_encoder.to(self.device, self.dtype)
        self.head = head.to(self.device)  # the head runs in float32, as ImageReward.score does (`.float()`)
        tok_dir = resolve_weights(self.tokenizer_ref, what=f"{self.name} tokenizer", setting="kwargs.tokenizer",
                                  needs=TOKENIZER_NEEDS) if self.tokenizer_ref else d
        self.tokenizer = load_tokenizer(tok_dir)
        return [self.vision, self.text, self.head]

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        return preprocess(pixels, size=self.image_size, mean=self.mean, std=self.std,
                          interpolation=self.interpolation, resize_mode="shortest_crop", crop_rounding=self.crop_rounding)

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor) -> torch.Tensor:
        """ImageReward.score_gard on already-preprocessed inputs."""
        emb = self.vision(pixel_values=pixel_values.to(self.device, self.dtype)).last_hidden_state
        att = torch.ones(emb.shape[:-1], dtype=torch.long, device=emb.device)
        out = self.text(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                        encoder_hidden_states=emb, encoder_attention_mask=att).last_hidden_state
        r = self.head(out[:, 0, :].float()).reshape(-1)
        return (r - REWARD_MEAN) / REWARD_STD

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return self.score_inputs(self.pixel_values(pixels), tok["input_ids"], tok["attention_mask"])
