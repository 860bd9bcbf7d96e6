"""PickScore (Kirstain et al. 2023): CLIP ViT-H/14 fine-tuned on Pick-a-Pic human preferences.

Score = `logit_scale.exp() * cos(image, text)`, as NeMo-Aligner's PickscoreRewardModel.get_reward and the
PickScore README compute it. The checkpoint (yuvalkirstain/PickScore_v1) ships no tokenizer or processor config:
the authors load both from laion/CLIP-ViT-H-14-laion2B-s32B-b79K, whose settings the card's preset copies
(224 px, bicubic shortest-edge resize, center crop, OpenAI CLIP mean/std, 77 tokens).
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


class PickScore(Reward):
    """PickScore: scaled cosine of a preference-tuned CLIP."""

    name = "pickscore"
    differentiable = True
    inputs = ("pixels", "prompt")

    def __init__(self, weights: str = "yuvalkirstain/PickScore_v1", revision: str | None = None,
                 processor: str | None = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", processor_revision: str | None = None,
                 image_size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN, std: Sequence[float] = OPENAI_CLIP_STD,
                 interpolation: str = "bicubic", crop_rounding: str = "floor", max_length: int = 77,
                 *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", max_batch_size: int = 32):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.weights, self.revision = weights, revision
        self.processor, self.processor_revision = processor, processor_revision
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_rounding, self.max_length_cap = interpolation, crop_rounding, int(max_length)

    def _load(self) -> list[torch.nn.Module]:
        from transformers import CLIPModel

        d = resolve_weights(self.weights, self.revision, what=self.name, needs=MODEL_NEEDS)
        with quiet_transformers():
            self.model = CLIPModel.from_pretrained(str(d), dtype=self.dtype).to(self.device)
        tok_dir = (resolve_weights(self.processor, self.processor_revision, what=f"{self.name} processor",
                                   setting="kwargs.processor", needs=TOKENIZER_NEEDS) if self.processor else d)
        self.tokenizer = load_tokenizer(tok_dir)
        self.max_length = token_max_length(self.tokenizer, min(self.max_length_cap,
                                                               self.model.config.text_config.max_position_embeddings))
        return [self.model]

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        return preprocess(pixels, size=self.image_size, mean=self.mean, std=self.std,
                          interpolation=self.interpolation, resize_mode="shortest_crop", crop_rounding=self.crop_rounding)

    def score_inputs(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        m = self.model
        img = pooled(m.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))).float()
        txt = pooled(m.get_text_features(input_ids=input_ids.to(self.device),
                                         attention_mask=None if attention_mask is None else attention_mask.to(self.device))).float()
        return m.logit_scale.float().exp() * (l2_normalize(img) * l2_normalize(txt)).sum(-1)

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        return self.score_inputs(self.pixel_values(pixels), tok["input_ids"], tok["attention_mask"])
