"""The shapes world's ground-truth judge as a reward (no gradient): does the image show the prompt's colour and
shape? Rules only, no learned model (`rewardtune.world.shapes`); use it as a `role: monitor` term to watch a
fine-tune for reward hacking, or with `rewardtune score`.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from rewardtune.rewards.base import Reward

METRICS = ("both", "colour", "shape", "mean")


class ShapesJudge(Reward):
    """1 when the image shows the prompt's colour and shape, else 0 (`metric: both`); or the colour or shape
    verdict alone, or their mean. Images are judged at the world's 32x32 (larger ones are downscaled with
    antialiasing first)."""

    name = "shapes-eval"
    differentiable = False
    inputs = ("pixels", "prompt")
    #: the trainer adds `explain()`'s verdicts to each eval: `eval/<term>/colour` etc., and the grid captions
    explain_in_eval: ClassVar[bool] = True

    def __init__(self, metric: str = "both", *, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = "float32", max_batch_size: int = 256):
        super().__init__(device=device, dtype=dtype, max_batch_size=max_batch_size)
        if metric not in METRICS:
            raise ValueError(f"shapes-eval: unknown metric '{metric}'; use one of: {', '.join(METRICS)}")
        self.metric = metric

    def _load(self) -> list[torch.nn.Module]:
        from rewardtune.world import shapes  # noqa: F401  (fail at load time, not at the first score)

        return []

    def _verdicts(self, pixels: torch.Tensor, prompts: list[str]):
        from rewardtune.world import shapes

        x = pixels.detach().float()
        if tuple(x.shape[-2:]) != (shapes.RES, shapes.RES):
            x = F.interpolate(x, size=(shapes.RES, shapes.RES), mode="bilinear", antialias=True, align_corners=False)
        return shapes.judge(x.clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy(), prompts)

    def _forward(self, pixels: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        vs = self._verdicts(pixels, prompts)
        if self.metric == "both":
            vals = [float(v.both_ok) for v in vs]
        elif self.metric == "colour":
            vals = [float(v.colour_ok) for v in vs]
        elif self.metric == "shape":
            vals = [float(v.shape_ok) for v in vs]
        else:
            vals = [(v.colour_ok + v.shape_ok) / 2 for v in vs]
        return torch.tensor(vals, dtype=torch.float32, device=self.device)

    def _explain(self, pixels: torch.Tensor, prompts: list[str]) -> list[dict[str, Any]]:
        return [{"colour": v.reading.colour, "shape": v.reading.shape, "colour_ok": v.colour_ok,
                 "shape_ok": v.shape_ok, "both_ok": v.both_ok, "verdict": v.text}
                for v in self._verdicts(pixels, prompts)]
