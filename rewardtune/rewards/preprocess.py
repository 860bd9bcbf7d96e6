"""Differentiable image preprocessing in torch, matching the reference image processors.

`resize -> center crop -> normalize`, on float pixels in [0, 1]. Resizing uses antialiasing when downscaling,
as PIL does, and the preset's interpolation (bicubic for CLIP-family processors, bilinear/bicubic for BLIP).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear", "nearest": "nearest", "area": "area"}


def resize_shortest_edge(x: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize so the shorter side equals `size`, keeping the aspect ratio (rounding like the HF processors)."""
    h, w = x.shape[-2:]
    if min(h, w) == size:
        return x
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    nh, nw = (size, new_long) if h <= w else (new_long, size)
    return resize(x, (nh, nw), interpolation)


def resize(x: torch.Tensor, hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    if interpolation not in _MODES:
        raise ValueError(f"Unknown interpolation '{interpolation}'. Use one of: {', '.join(_MODES)}.")
    if tuple(x.shape[-2:]) == tuple(hw):
        return x
    mode = _MODES[interpolation]
    kw = {} if mode in ("nearest", "area") else {"align_corners": False, "antialias": True}
    return F.interpolate(x, size=hw, mode=mode, **kw)


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if h < th or w < tw:  # pad like the HF processors do before cropping
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    top = int(round((h - th) / 2.0))
    left = int(round((w - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def clip_preprocess(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic") -> torch.Tensor:
    """CLIPImageProcessor's path: shortest-edge resize, center crop, normalize."""
    return normalize(center_crop(resize_shortest_edge(x, size, interpolation), size), mean, std)


def square_preprocess(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                      interpolation: str = "bicubic") -> torch.Tensor:
    """BLIP's path: resize straight to size x size, normalize."""
    return normalize(resize(x, (size, size), interpolation), mean, std)
