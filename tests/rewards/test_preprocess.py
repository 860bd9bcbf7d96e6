"""Torch preprocessing against PIL itself on real photos, and the crop/pad conventions of each reference."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rewardtune.rewards.preprocess import (
    center_crop,
    preprocess,
    resize,
    resize_longest_pad,
    resize_shortest_edge,
    shortest_edge_size,
)

PHOTOS = sorted((Path(__file__).resolve().parents[1] / "fixtures" / "images").glob("*.webp"))


def _tensor(im):
    return torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("interp,resample", [("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)])
@pytest.mark.parametrize("wh", [(224, 224), (280, 224), (224, 173), (600, 600)])
def test_resize_matches_pil_on_photos(interp, resample, wh):
    assert len(PHOTOS) == 4
    worst, mean = 0.0, 0.0
    for p in PHOTOS:
        im = Image.open(p)
        ref = _tensor(im.resize(wh, resample))
        ours = resize(_tensor(im), (wh[1], wh[0]), interp)
        d = (ours - ref).abs()
        worst, mean = max(worst, d.max().item()), max(mean, d.mean().item())
    # PIL resamples uint8 in fixed point and rounds after each pass: ~1/255 on average, < 3/255 at worst
    assert worst < 3 / 255 and mean < 0.5 / 255, (worst * 255, mean * 255)


def test_resize_without_antialias_would_fail():
    """The tolerance above is tight enough to catch plain (non-antialiased) interpolation."""
    im = Image.open(PHOTOS[0])
    ref = _tensor(im.resize((224, 224), Image.BICUBIC))
    plain = torch.nn.functional.interpolate(_tensor(im), size=(224, 224), mode="bicubic", align_corners=False)
    assert (plain - ref).abs().max().item() > 3 / 255


def test_shortest_edge_rounding_and_crop_offsets():
    assert shortest_edge_size(512, 387, 224) == (int(224 * 512 / 387), 224) == (296, 224)
    assert shortest_edge_size(300, 301, 224) == (224, 224)
    x = torch.arange(9 * 9, dtype=torch.float32).view(1, 1, 9, 9)
    # (9 - 2) / 2 = 3.5: transformers floors to 3, torchvision rounds half to even -> 4
    assert center_crop(x, 2, "floor")[0, 0, 0, 0].item() == 3 * 9 + 3
    assert center_crop(x, 2, "round")[0, 0, 0, 0].item() == 4 * 9 + 4
    y = torch.ones(1, 3, 10, 6)
    out = center_crop(y, 8)
    assert out.shape[-2:] == (8, 8) and out[..., :, 0].sum() == 0  # padded with zeros like the references


def test_longest_pad_like_hpsv2():
    x = torch.ones(1, 3, 387, 512)
    out = resize_longest_pad(x, 224)
    assert out.shape[-2:] == (224, 224)
    nh = round(387 * 224 / 512)  # 169
    top = (224 - nh) // 2
    assert out[0, 0, top - 1].abs().sum() == 0 and out[0, 0, top + nh].abs().sum() == 0
    assert torch.allclose(out[0, 0, top + 2], torch.ones(224), atol=1e-5)


def test_preprocess_is_differentiable_everywhere():
    x = torch.rand(2, 3, 50, 70, requires_grad=True)
    for mode in ("shortest_crop", "longest_pad", "squash"):
        x.grad = None
        preprocess(x, size=32, mean=(0.5,) * 3, std=(0.25,) * 3, resize_mode=mode).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="resize_mode"):
        preprocess(x, size=32, mean=(0.5,) * 3, std=(0.25,) * 3, resize_mode="zoom")
    with pytest.raises(ValueError, match="interpolation"):
        resize_shortest_edge(x, 32, "lanczos")
