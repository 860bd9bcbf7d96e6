"""LAION improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor).

An MLP (768-1024-128-64-16-1, dropout between, no activations) on the L2-normalised CLIP ViT-L/14 image embedding;
the prompt is ignored. Weights: the published `sac+logos+ava1-l14-linearMSE.pth` (a plain state dict with keys
`layers.{0,2,4,6,7}.{weight,bias}`), loaded with `weights_only=True`. The CLIP tower is transformers'
openai/clip-vit-large-patch14, equal to OpenAI's `clip.load("ViT-L/14")` which the predictor was trained on;
its preprocessing is torchvision's Resize(224, bicubic) + CenterCrop(224) + normalize.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rewardtune.rewards._util import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    find_file,
    l2_normalize,
    load_torch_checkpoint,
)
from rewardtune.rewards._weights import MODEL_NEEDS, resolve_weights
from rewardtune.rewards.base import Reward
from rewardtune.rewards.preprocess import preprocess


class AestheticMLP(nn.Module):
    """The predictor's exact layer layout, so its state-dict keys load unchanged."""

    def __init__(self, input_size: int = 768):
        super().__init__()
        self.input_size = input_size
        self.layers = nn.Sequential(
            nn.Linear(input_size, 1024), nn.Dropout(0.2),
            nn.Linear(1024, 128), nn.Dropout(0.2),
            nn.Linear(128, 64), nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def convert_mlp_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept the original keys (`layers.N.*`) and wrapped ones (`mlp.layers.N.*`, `module.layers.N.*`)."""
    out = {}
    for k, v in sd.items():
        i = k.find("layers.")
        if i < 0:
            raise KeyError(f"unexpected key in aesthetic MLP checkpoint: {k}")
        out[k[i:]] = v.float()
    return out


class LaionAesthetic(Reward):
    """Aesthetic score (roughly 1-10) of an image; differentiable through CLIP and the MLP."""

    name = "aesthetic"
    differentiable = True
    inputs = ("pixels",)

    def __init__(self, weights: str = "trl-lib/ddpo-aesthetic-predictor", revision: str | None = None,
                 filename: str = "aesthetic-model.pth", clip_weights: str | None = "openai/clip-vit-large-patch14",
                 clip_revision: str | None = None, image_size: int = 224, mean: Sequence[float] = OPENAI_CLIP_MEAN,
                 std: Sequence[float] = OPENAI_CLIP_STD, interpolation: str = "bicubic", crop_rounding: str = "round",
                 *, device: str | torch.device = "cpu", dtype: str | torch.dtype = "float32", max_batch_size: int = 32):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        self.weights, self.revision, self.filename = weights, revision, filename
        self.clip_weights, self.clip_revision = clip_weights, clip_revision
        self.image_size, self.mean, self.std = int(image_size), tuple(mean), tuple(std)
        self.interpolation, self.crop_rounding = interpolation, crop_rounding

    def _load(self) -> list[torch.nn.Module]:
        from rewardtune.rewards._shared import clip_image_tower

        d = resolve_weights(self.weights, self.revision, what=self.name, needs=((self.filename,),))
        sd = convert_mlp_state_dict(load_torch_checkpoint(find_file(d, self.filename, self.name)))
        self.mlp = AestheticMLP(sd["layers.0.weight"].shape[1])
        self.mlp.load_state_dict(sd)
        self.mlp.to(self.device, self.dtype)
        # no clip_weights: the CLIP checkpoint sits in the same directory (tiny twins, local bundles)
        cd = resolve_weights(self.clip_weights, self.clip_revision, what=f"{self.name} CLIP",
                             setting="kwargs.clip_weights", needs=MODEL_NEEDS) if self.clip_weights else d
        self.clip = clip_image_tower(cd, self.dtype, self.device)  # one copy with sam-llm's labeller (FineRewards)
        return [self.clip, self.mlp]

    def pixel_values(self, pixels: torch.Tensor) -> torch.Tensor:
        return preprocess(pixels, size=self.image_size, mean=self.mean, std=self.std,
                          interpolation=self.interpolation, resize_mode="shortest_crop", crop_rounding=self.crop_rounding)

    def score_embeddings(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """MLP on L2-normalised CLIP image embeddings [B, D] -> [B]."""
        e = l2_normalize(image_embeds.float()).to(self.dtype)
        return self.mlp(e).float().reshape(-1)

    def score_inputs(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip(pixel_values=pixel_values.to(self.device, self.dtype))
        return self.score_embeddings(out.image_embeds)

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.score_inputs(self.pixel_values(pixels))
