"""Loading images into float pixels [3,H,W] in [0,1], with every PIL mode converted correctly."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def pil_to_rgb(img) -> Any:
    """Convert any PIL mode (RGBA, LA, L, P, I;16, I, F, CMYK...) to 8-bit RGB; alpha is composited on white."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        maxv = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / maxv * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, img)
    return img.convert("RGB")


def pil_to_tensor(img) -> torch.Tensor:
    arr = np.asarray(pil_to_rgb(img), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def open_image(path: str | Path):
    from PIL import Image

    with Image.open(path) as im:
        im.seek(0)  # first frame of a GIF / animated WebP
        im.load()
        return im.copy()


def to_pixel_list(images: Any) -> list[torch.Tensor]:
    """PIL images, paths, a [B,3,H,W] or [3,H,W] tensor, or a list of these -> list of [3,H,W] in [0,1]."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"Expected a [B,3,H,W] or [3,H,W] tensor, got {tuple(images.shape)}")
        return list(images.float())
    if not isinstance(images, Sequence) or isinstance(images, str | bytes):
        images = [images]
    out: list[torch.Tensor] = []
    for im in images:
        if isinstance(im, torch.Tensor):
            out.extend(to_pixel_list(im))
        elif isinstance(im, str | Path):
            out.append(pil_to_tensor(open_image(im)))
        else:
            out.append(pil_to_tensor(im))
    return out
