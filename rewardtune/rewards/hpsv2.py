"""HPS v2 / v2.1 (Wu et al. 2023): open_clip ViT-H/14 fine-tuned on HPD v2, run on transformers' CLIPModel.

The published checkpoints (xswu/HPSv2: HPS_v2_compressed.pt, HPS_v2.1_compressed.pt) are open_clip state dicts
(`{'state_dict': ...}`). `open_clip_to_hf` maps them onto `CLIPModel` (fused attention `in_proj` split into q/k/v,
projections transposed), so neither open_clip nor torchvision is needed. Score = cos(image, text) as in
`hpsv2.score` (no logit scale). HPSv2's eval transform resizes the longest edge to 224 (bicubic, on the float
tensor, antialiased) and zero-pads to a square before normalising; `preprocess(..., resize_mode="longest_pad")`
does the same in torch.
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from rewardtune.rewards._util import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    find_file,
    l2_normalize,
    load_tokenizer,
    load_torch_checkpoint,
    pooled,
    quiet_transformers,
    token_max_length,
)
from rewardtune.rewards._weights import TOKENIZER_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward
from rewardtune.rewards.preprocess import preprocess

#: open_clip's model configs (model_configs/<arch>.json) for the architectures HPS uses
OPEN_CLIP_ARCHS = {
    "ViT-H-14": {"embed_dim": 1024,
                 "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
                 "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24}},
}
VERSIONS = {"v2.0": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}


def hf_clip_config(oc: dict):
    """transformers CLIPConfig equivalent to an open_clip config dict (GELU, LayerNorm eps 1e-5)."""
    from transformers import CLIPConfig

    v, t = oc["vision_cfg"], oc["text_cfg"]
    vw, tw = int(v["width"]), int(t["width"])
    vocab = int(t.get("vocab_size", 49408))
    return CLIPConfig(
        text_config=dict(vocab_size=vocab, hidden_size=tw, intermediate_size=int(tw * t.get("mlp_ratio", 4.0)),
                         num_hidden_layers=int(t["layers"]), num_attention_heads=int(t.get("heads", tw // 64)),
                         max_position_embeddings=int(t.get("context_length", 77)), hidden_act="gelu",
                         layer_norm_eps=1e-5, projection_dim=int(oc["embed_dim"]),
                         # open_clip pools at argmax(ids): the end-of-text token is the largest id
                         bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=0),
        vision_config=dict(hidden_size=vw, intermediate_size=int(vw * v.get("mlp_ratio", 4.0)),
                           num_hidden_layers=int(v["layers"]), num_attention_heads=vw // int(v.get("head_width", 64)),
                           image_size=int(v["image_size"]), patch_size=int(v["patch_size"]), hidden_act="gelu",
                           layer_norm_eps=1e-5, projection_dim=int(oc["embed_dim"])),
        projection_dim=int(oc["embed_dim"]),
    )


_BLOCK = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
          "attn.out_proj": "self_attn.out_proj"}


def open_clip_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map an open_clip CLIP state dict (ViT image tower, built-in text tower) to transformers CLIPModel keys."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        v = v.float()
        if k == "attn_mask" or k.endswith(".attn_mask"):
            continue
        m = re.match(r"(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$", k)
        if m:
            tower = "vision_model" if m.group(1) else "text_model"
            pre = f"{tower}.encoder.layers.{m.group(2)}."
            rest = m.group(3)
            if rest.startswith("attn.in_proj_"):
                kind = rest[len("attn.in_proj_"):]  # weight | bias
                for name, part in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0), strict=True):
                    out[f"{pre}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            for a, b in _BLOCK.items():
                if rest.startswith(a + "."):
                    out[pre + b + rest[len(a):]] = v
                    break
            else:
                raise KeyError(f"unexpected open_clip key {k}")
            continue
        simple = {
            "visual.class_embedding": "vision_model.embeddings.class_embedding",
            "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
            "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
            "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
            "positional_embedding": "text_model.embeddings.position_embedding.weight",
            "logit_scale": "logit_scale",
        }
        if k in simple:
            out[simple[k]] = v
        elif k == "visual.proj":
            out["visual_projection.weight"] = v.t().contiguous()
        elif k == "text_projection":
            out["text_projection.weight"] = v.t().contiguous()
        elif k.startswith("visual.ln_pre."):
            out["vision_model.pre_layrnorm." + k.split(".")[-1]] = v
        elif k.startswith("visual.ln_post."):
            out["vision_model.post_layernorm." + k.split(".")[-1]] = v
        elif k.startswith("ln_final."):
            out["text_model.final_layer_norm." + k.split(".")[-1]] = v
        else:
            raise KeyError(f"unexpected open_clip key {k}")
    return out


def load_open_clip_into_hf(sd: dict[str, torch.Tensor], oc_config: dict):
    """Build a CLIPModel for `oc_config` and load the converted open_clip state dict (strict)."""
    from transformers import CLIPModel

    model = CLIPModel(hf_clip_config(oc_config))
    conv = open_clip_to_hf(sd)
    missing, unexpected = model.load_state_dict(conv, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"open_clip -> CLIPModel mapping incomplete: missing {missing[:8]}, unexpected {unexpected[:8]}")
    return model


class HPSv2(Reward):
    """Human Preference Score v2 / v2.1: cosine of HPS-tuned open_clip ViT-H/14 embeddings."""

    name = "hpsv2"
    differentiable = True
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "xswu/HPSv2", revision: str | None = None, filename: str = "HPS_v2.1_compressed.pt",
                 arch: str = "ViT-H-14", tokenizer: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
                 image_size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 interpolation: str = "bicubic", resize_mode: str = "longest_pad",
                 *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", max_batch_size: int = 32):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.weights, self.revision, self.filename, self.arch, self.tokenizer_ref = weights, revision, filename, arch, tokenizer
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.resize_mode = interpolation, resize_mode

    def _load(self) -> list[torch.nn.Module]:
        d = resolve_weights(self.weights, self.revision, what=self.name, needs=((self.filename,),))
        cfg_file = Path(d) / "open_clip_config.json"  # open_clip's hub layout; tiny twins write it too
        if cfg_file.is_file():
            oc = json.loads(cfg_file.read_text())
            oc = oc.get("model_cfg", oc)
        elif self.arch in OPEN_CLIP_ARCHS:
            oc = OPEN_CLIP_ARCHS[self.arch]
        else:
            raise ValueError(f"{self.name}: unknown arch '{self.arch}' and no open_clip_config.json in {d}. "
                             f"Known: {', '.join(OPEN_CLIP_ARCHS)}.")
        sd = load_torch_checkpoint(find_file(d, self.filename, self.name))
        with quiet_transformers():
            self.model = load_open_clip_into_hf(sd, oc).to(self.device, self.dtype)
        tok_dir = resolve_weights(self.tokenizer_ref, what=f"{self.name} tokenizer", setting="kwargs.tokenizer",
                                  needs=TOKENIZER_NEEDS) if self.tokenizer_ref else d
        self.tokenizer = load_tokenizer(tok_dir)
        self.context_length = int(oc["text_cfg"].get("context_length", 77))
        return [self.model]

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """open_clip's layout: [BOS] tokens [EOS] then zeros to the context length; truncated keeping EOS last."""
        n = self.context_length
        ids = self.tokenizer(prompts, add_special_tokens=True, truncation=True,
                             max_length=token_max_length(self.tokenizer, n))["input_ids"]
        out = torch.zeros(len(ids), n, dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, :len(row)] = torch.as_tensor(row[:n])
        return out

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        return preprocess(pixels, size=self.image_size, mean=self.mean, std=self.std,
                          interpolation=self.interpolation, resize_mode=self.resize_mode)

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        m = self.model
        img = pooled(m.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))).float()
        # no padding mask, as open_clip: attention is causal and the pooled EOS token precedes the padding
        txt = pooled(m.get_text_features(input_ids=input_ids.to(self.device))).float()
        return (l2_normalize(img) * l2_normalize(txt)).sum(-1)

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score_inputs(self.pixel_values(pixels), self.tokenize(prompts))
