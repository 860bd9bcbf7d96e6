"""SAM automatic mask generation in plain torch: each filtering piece on controlled inputs, then the whole
generator on a synthetic two-shape image, then the SAM wiring on the tiny SAM twin."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rewardtune.rewards._sam_amg import (
    SamMaskGenerator,
    box_iou,
    generate_masks,
    masks_to_boxes,
    nms,
    point_grid,
    read_sam_preprocessing,
    stability_score,
)


def test_point_grid_is_cell_centres_row_major():
    g = point_grid(2)
    torch.testing.assert_close(g, torch.tensor([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]))
    assert point_grid(16).shape == (256, 2)
    with pytest.raises(ValueError):
        point_grid(0)


def test_stability_score_is_area_ratio_of_offset_thresholds():
    logits = torch.full((10, 10), -5.0)
    logits.view(-1)[:20] = 5.0  # above +1
    logits.view(-1)[20:30] = 0.5  # between -1 and +1: in the loose mask only
    s = stability_score(logits[None], 0.0, 1.0)
    torch.testing.assert_close(s, torch.tensor([20 / 30]))
    # a hard mask (all logits far from the threshold) is perfectly stable; an empty one scores 0
    hard = torch.where(logits > 0, 8.0, -8.0)
    assert stability_score(hard[None]).item() == 1.0
    assert stability_score(torch.full((1, 4, 4), -3.0)).item() == 0.0


def test_masks_to_boxes_exclusive_corners_and_empty():
    m = torch.zeros(2, 8, 10, dtype=torch.bool)
    m[0, 2:5, 3:9] = True
    torch.testing.assert_close(masks_to_boxes(m), torch.tensor([[3.0, 2.0, 9.0, 5.0], [0.0, 0.0, 0.0, 0.0]]))


def test_box_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0, 50 / 150, 0.0]]))


def test_nms_keeps_best_of_overlapping_and_all_disjoint():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 0, 11, 10], [30.0, 30, 40, 40], [0.0, 0, 10, 9]])
    scores = torch.tensor([0.8, 0.9, 0.5, 0.7])
    keep = nms(boxes, scores, 0.7)
    assert keep.tolist() == [1, 2]  # 0 and 3 overlap box 1 by IoU > 0.7
    assert sorted(nms(boxes, scores, 0.95).tolist()) == [0, 1, 2, 3]
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).numel() == 0


# -- the whole generator on a synthetic image ------------------------------------------------------------------
H = W = 64


def two_shapes_image():
    """Two flat-coloured shapes (a red rectangle, a blue disk) on a noisy grey background."""
    g = torch.Generator().manual_seed(0)
    img = (100 + torch.randint(0, 50, (3, H, W), generator=g)).float() / 255
    square = torch.zeros(H, W, dtype=torch.bool)
    square[8:24, 6:28] = True
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    disk = (yy - 44) ** 2 + (xx - 42) ** 2 <= 11 ** 2
    img[:, square] = torch.tensor([1.0, 0.0, 0.0])[:, None]
    img[:, disk] = torch.tensor([0.0, 0.0, 1.0])[:, None]
    return img, square, disk


def region_predictor(img):
    """A controlled stand-in for SAM's decoder: for a point, the flat-colour region under it as three candidates:
    a sharp mask (pred IoU 0.95), a blurred, dilated mask (pred IoU 0.97, unstable), and the whole image
    (pred IoU 0.5). Only the filters decide which survive."""

    def predict(pts):
        p = pts.shape[0]
        rows = (pts[:, 1] * H).long().clamp(max=H - 1)
        cols = (pts[:, 0] * W).long().clamp(max=W - 1)
        colours = img[:, rows, cols]  # [3, P]
        region = (img[:, None] == colours[:, :, None, None]).all(0).float()  # [P, H, W]
        sharp = region * 12 - 6
        d = F.avg_pool2d(region[:, None], 9, stride=1, padding=4, count_include_pad=False)[:, 0]
        blurred = 8 * (d - 0.25)
        whole = torch.full_like(region, 6.0)
        return torch.stack([sharp, blurred, whole], dim=1), torch.tensor([0.95, 0.97, 0.5]).expand(p, 3).clone()

    return predict


def test_two_flat_shapes_give_two_masks():
    img, square, disk = two_shapes_image()
    ms = generate_masks(region_predictor(img), points_per_side=16, points_per_batch=50, pred_iou_thresh=0.88,
                        stability_score_thresh=0.92, box_nms_thresh=0.7, min_area_frac=0.01)
    assert len(ms) == 2
    matched = sorted(next(k for k, w in enumerate([square, disk]) if torch.equal(m, w)) if any(
        torch.equal(m, w) for w in [square, disk]) else -1 for m in ms.masks)
    assert matched == [0, 1], "the kept masks must be exactly the rectangle and the disk"
    assert ms.stability.min().item() == 1.0 and (ms.pred_iou == 0.95).all()
    boxes = {tuple(b) for b in ms.boxes.tolist()}
    assert (6.0, 8.0, 28.0, 24.0) in boxes and (31.0, 33.0, 54.0, 56.0) in boxes


def test_each_filter_matters_on_two_shapes():
    img, _, _ = two_shapes_image()
    pred = region_predictor(img)
    kw = dict(points_per_side=16, points_per_batch=64, min_area_frac=0.01)
    # no NMS: every grid point inside a shape keeps its own copy
    assert len(generate_masks(pred, box_nms_thresh=1.0, **kw)) > 10
    # no stability filter: the blurred masks (higher predicted IoU) win NMS and are not the shapes
    loose = generate_masks(pred, stability_score_thresh=0.0, **kw)
    assert len(loose) >= 2 and (loose.stability < 0.92).any()
    # no IoU filter: the whole-image mask survives too
    assert len(generate_masks(pred, pred_iou_thresh=0.0, **kw)) == 3
    # max_masks keeps the best ones
    assert len(generate_masks(pred, max_masks=1, **kw)) == 1


def test_generate_masks_empty_and_bad_predict():
    def nothing(pts):
        return torch.full((pts.shape[0], 3, 8, 8), -5.0), torch.full((pts.shape[0], 3), 0.99)

    ms = generate_masks(nothing, points_per_side=4)
    assert len(ms) == 0 and len(ms.resized(20, 30)) == 0 and ms.resized(20, 30).masks.shape == (0, 20, 30)
    with pytest.raises(ValueError, match="logits"):
        generate_masks(lambda p: (torch.zeros(p.shape[0], 8, 8), torch.zeros(p.shape[0])), points_per_side=2)


def test_resized_maps_masks_to_image_size():
    logits = torch.full((1, 8, 8), -6.0)
    logits[0, 2:6, 0:4] = 6.0
    ms = generate_masks(lambda p: (logits.expand(p.shape[0], 1, 8, 8).clone(), torch.ones(p.shape[0], 1)),
                        points_per_side=2)
    big = ms.resized(32, 32)
    assert big.masks.shape == (1, 32, 32)
    torch.testing.assert_close(big.boxes[0], torch.tensor([0.0, 8.0, 16.0, 24.0]), atol=1.0, rtol=0)


# -- SAM wiring on the tiny twin --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_sam():
    from transformers import SamModel

    from rewardtune.zoo import materialize

    d = materialize("zoo:sam")
    model = SamModel.from_pretrained(d).eval()
    return model, read_sam_preprocessing(d, model)


def test_sam_preprocess_resizes_longest_edge_and_pads(tiny_sam):
    model, (size, pad, mean, std) = tiny_sam
    assert size == 64 and pad == (64, 64)
    gen = SamMaskGenerator(model, longest_edge=size, pad_hw=pad, mean=mean, std=std)
    assert gen.resized_hw(48, 96) == (32, 64)
    x = torch.rand(2, 3, 48, 96)
    pv = gen.preprocess(x)
    assert pv.shape == (2, 3, 64, 64)
    assert (pv[:, :, 32:] == 0).all() and (pv[:, :, :32].abs().sum() > 0)


def test_sam_generator_on_tiny_twin(tiny_sam):
    model, (size, pad, mean, std) = tiny_sam
    gen = SamMaskGenerator(model, longest_edge=size, pad_hw=pad, mean=mean, std=std, points_per_side=4,
                           pred_iou_thresh=0.0, stability_score_thresh=0.5, max_masks=3)
    x = torch.rand(2, 3, 40, 52, generator=torch.Generator().manual_seed(0))
    a, b = gen(x), gen(x)
    assert len(a) == 2 and all(len(m) >= 1 for m in a)
    for ms in a:
        assert ms.masks.shape[1:] == (40, 52) and ms.masks.dtype == torch.bool
        assert (ms.boxes[:, 2] <= 52).all() and (ms.boxes[:, 3] <= 40).all()
        assert (ms.stability >= 0.5).all() and (ms.pred_iou > 0).all()
    for ma, mb in zip(a, b, strict=True):
        assert torch.equal(ma.masks, mb.masks)
