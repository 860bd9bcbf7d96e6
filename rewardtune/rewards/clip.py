"""CLIP score: `logit_scale.exp() * cos(image, text)` (Hessel et al. use 100 * cos; CLIP's learned scale is 100).

Any transformers CLIP checkpoint (config.json + weights + tokenizer) works; preprocessing follows
CLIPImageProcessor (shortest-edge bicubic resize, center crop, normalize) but in torch, so it is differentiable.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from rewardtune.rewards._util import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    l2_normalize,
    load_tokenizer,
    pooled,
    quiet_transformers,
    token_max_length,
)
from rewardtune.rewards._weights import MODEL_NEEDS, TOKENIZER_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward
from rewardtune.rewards.preprocess import preprocess


class CLIPScore(Reward):
    """Scaled (or raw) cosine between CLIP image and text embeddings."""

    name = "clip"
    differentiable = True
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "openai/clip-vit-large-patch14", revision: str | None = None,
                 image_size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 interpolation: str = "bicubic", crop_rounding: str = "floor", tokenizer: str | None = None,
                 raw_cosine: bool = False, *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32",
                 max_batch_size: int = 32):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.weights, self.revision, self.tokenizer_ref = weights, revision, tokenizer
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_rounding = interpolation, crop_rounding
        self.raw_cosine = bool(raw_cosine)

    def _load(self) -> list[torch.nn.Module]:
        from transformers import CLIPModel

        d = resolve_weights(self.weights, self.revision, what=self.name, needs=MODEL_NEEDS)
        with quiet_transformers():
            self.model = CLIPModel.from_pretrained(str(d), dtype=self.dtype).to(self.device)
        tok_dir = resolve_weights(self.tokenizer_ref, what=f"{self.name} tokenizer", setting="kwargs.tokenizer",
                                  needs=TOKENIZER_NEEDS) if self.tokenizer_ref else d
        self.tokenizer = load_tokenizer(tok_dir)
        self.max_length = token_max_length(self.tokenizer, self.model.config.text_config.max_position_embeddings)
        return [self.model]

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B,3,H,W] in [0,1] -> the model's normalised input (differentiable)."""
        return preprocess(pixels, size=self.image_size, mean=self.mean, std=self.std,
                          interpolation=self.interpolation, resize_mode="shortest_crop", crop_rounding=self.crop_rounding)

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Score already-preprocessed inputs (used by the parity tests on the reference's own tensors)."""
        m = self.model
        img = pooled(m.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))).float()
        txt = pooled(m.get_text_features(input_ids=input_ids.to(self.device),
                                         attention_mask=None if attention_mask is None else attention_mask.to(self.device))).float()
        cos = (l2_normalize(img) * l2_normalize(txt)).sum(-1)
        return cos if self.raw_cosine else m.logit_scale.float().exp() * cos

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.score_inputs(self.pixel_values(pixels), tok["input_ids"], tok["attention_mask"])
