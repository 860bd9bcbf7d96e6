"""Differentiable image preprocessing in torch, matching the reference image processors.

Float pixels in [0, 1] go through `resize -> crop (or pad) -> normalize`, all in torch so gradients reach the
pixels. Resizing always uses antialiasing: `F.interpolate(..., antialias=True)` implements PIL's separable
resampling filters (bicubic with a=-0.5, bilinear triangle, both widened when downscaling), which is what the
reference processors run. What still differs from a reference PIL path is quantisation: PIL resamples 8-bit
images in fixed point and rounds to uint8 after each pass, so on real photos our pixels differ by up to about
2/255 before normalisation (measured numbers: docs/parity.md).

Reference behaviours reproduced here:
- transformers' CLIPImageProcessor: shortest edge -> `size` (long side `int(size * long / short)`), center crop
  with offsets `(h - th) // 2` ("floor").
- torchvision `Resize(size) + CenterCrop(size)` (open_clip, OpenAI CLIP, ImageReward, the LAION aesthetic
  predictor): same resize, crop offsets `int(round((h - th) / 2))` ("round").
- HPSv2's `ResizeMaxSize`: longest edge -> `size` (`round(dim * scale)`), then zero-pad to a square.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

_MODES = ("bicubic", "bilinear", "nearest", "area")
CROP_ROUNDING = ("floor", "round")


def resize(x: torch.Tensor, hw: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize [B,C,H,W] to `hw` with PIL-like antialiased filters (bicubic/bilinear)."""
    if interpolation not in _MODES:
        raise ValueError(f"Unknown interpolation '{interpolation}'. Use one of: {', '.join(_MODES)}.")
    hw = (int(hw[0]), int(hw[1]))
    if tuple(x.shape[-2:]) == hw:
        return x
    if interpolation in ("nearest", "area"):
        return F.interpolate(x, size=hw, mode=interpolation)
    return F.interpolate(x, size=hw, mode=interpolation, align_corners=False, antialias=True)


def shortest_edge_size(h: int, w: int, size: int) -> tuple[int, int]:
    """Output (h, w) of a shortest-edge resize, rounded as transformers and torchvision do (truncation)."""
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def resize_shortest_edge(x: torch.Tensor, size: int, interpolation: str = "bicubic") -> torch.Tensor:
    """Resize so the shorter side equals `size`, keeping the aspect ratio."""
    h, w = x.shape[-2:]
    return resize(x, shortest_edge_size(h, w, size), interpolation)


def center_crop(x: torch.Tensor, size: int | tuple[int, int], rounding: str = "floor") -> torch.Tensor:
    """Center crop; pads with zeros first when the image is smaller than the crop (as both references do).

    `rounding="floor"`: offsets `(h - th) // 2` (transformers); `"round"`: `int(round((h - th) / 2))`
    (torchvision, Python's round-half-to-even).
    """
    if rounding not in CROP_ROUNDING:
        raise ValueError(f"Unknown crop rounding '{rounding}'. Use one of: {', '.join(CROP_ROUNDING)}.")
    th, tw = (size, size) if isinstance(size, int) else size
    h, w = x.shape[-2:]
    if h < th or w < tw:
        ph, pw = max(th - h, 0), max(tw - w, 0)
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        h, w = x.shape[-2:]
    if rounding == "floor":
        top, left = (h - th) // 2, (w - tw) // 2
    else:
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return x[..., top:top + th, left:left + tw]


def resize_longest_pad(x: torch.Tensor, size: int, interpolation: str = "bicubic", fill: float = 0.0) -> torch.Tensor:
    """HPSv2's eval transform: longest edge -> `size` (`round(dim * scale)`), then pad to a centred square."""
    h, w = x.shape[-2:]
    scale = size / float(max(h, w))
    nh, nw = round(h * scale), round(w * scale)
    x = resize(x, (nh, nw), interpolation)
    ph, pw = size - nh, size - nw
    if ph or pw:
        x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=fill)
    return x


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def clip_preprocess(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                    interpolation: str = "bicubic", crop_rounding: str = "floor") -> torch.Tensor:
    """Shortest-edge resize, center crop, normalize (CLIPImageProcessor / torchvision Resize+CenterCrop)."""
    x = resize_shortest_edge(x, size, interpolation)
    return normalize(center_crop(x, size, crop_rounding), mean, std)


def square_preprocess(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                      interpolation: str = "bicubic") -> torch.Tensor:
    """Resize straight to size x size (no crop), normalize (BLIP's own eval transform)."""
    return normalize(resize(x, (size, size), interpolation), mean, std)


def pad_preprocess(x: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bicubic") -> torch.Tensor:
    """Longest-edge resize, zero-pad to a square, normalize (HPSv2)."""
    return normalize(resize_longest_pad(x, size, interpolation), mean, std)


RESIZE_MODES = ("shortest_crop", "longest_pad", "squash")


def preprocess(x: torch.Tensor, *, size: int, mean: Sequence[float], std: Sequence[float],
               interpolation: str = "bicubic", resize_mode: str = "shortest_crop",
               crop_rounding: str = "floor") -> torch.Tensor:
    """Dispatch on a preset's `resize_mode`."""
    if resize_mode == "shortest_crop":
        return clip_preprocess(x, size, mean, std, interpolation, crop_rounding)
    if resize_mode == "longest_pad":
        return pad_preprocess(x, size, mean, std, interpolation)
    if resize_mode == "squash":
        return square_preprocess(x, size, mean, std, interpolation)
    raise ValueError(f"Unknown resize_mode '{resize_mode}'. Use one of: {', '.join(RESIZE_MODES)}.")
