"""Automatic mask generation for SAM in plain torch (no torchvision), on transformers' `SamModel`.

The recipe of segment-anything's automatic mask generator, single crop layer:

1. prompt the mask decoder with every point of a regular `n x n` grid, `points_per_batch` points at a time;
   each point yields SAM's three multimask candidates with a predicted IoU;
2. drop candidates whose predicted IoU is under `pred_iou_thresh`;
3. drop candidates whose *stability score* is under `stability_score_thresh`: the IoU between the mask
   thresholded at `mask_threshold + offset` and at `mask_threshold - offset` (a mask whose area barely moves when
   the logit threshold moves is stable);
4. drop masks smaller than `min_area_frac` of the image;
5. greedy non-maximum suppression on the masks' bounding boxes (`box_nms_thresh`), best predicted IoU first.

`generate_masks` holds steps 1-5 and takes any `predict(points) -> (logits, iou)` function, so the filtering is
testable with controlled inputs; `SamMaskGenerator` supplies the SAM one. Filtering runs on SAM's low-resolution
logits (256 x 256 for the 1024 px models; the reference upsamples to the image first), which is an order of
magnitude cheaper; only the surviving masks are upsampled to the image size.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: predict(points [P, 2] in [0, 1] as (x, y) of the image) -> (logits [P, M, h, w], predicted iou [P, M])
PredictFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def point_grid(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """`n*n` points at the centres of an n x n grid of cells, as (x, y) in [0, 1]; row-major (y outer)."""
    if n < 1:
        raise ValueError(f"points_per_side must be >= 1, got {n}")
    c = (torch.arange(n, dtype=torch.float32, device=device) + 0.5) / n
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def stability_score(logits: torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0) -> torch.Tensor:
    """IoU of the masks `logits > t + offset` and `logits > t - offset` over the last two dims; 0 for empty masks.

    The high-threshold mask is contained in the low-threshold one, so the IoU is a ratio of areas.
    """
    inter = (logits > mask_threshold + offset).flatten(-2).sum(-1, dtype=torch.int64)
    union = (logits > mask_threshold - offset).flatten(-2).sum(-1, dtype=torch.int64)
    return torch.where(union > 0, inter.float() / union.clamp(min=1).float(), torch.zeros_like(inter, dtype=torch.float32))


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Boxes `[N, 4]` (x1, y1, x2, y2) of boolean masks `[N, h, w]`; x2/y2 are exclusive. Empty masks give zeros."""
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], 4, device=masks.device)
    n, h, w = masks.shape
    cols = masks.any(dim=1)  # [N, w]
    rows = masks.any(dim=2)  # [N, h]
    xs = torch.arange(w, device=masks.device)
    ys = torch.arange(h, device=masks.device)
    big = max(h, w) + 1
    x1 = torch.where(cols, xs, big).min(dim=1).values
    x2 = torch.where(cols, xs, -1).max(dim=1).values + 1
    y1 = torch.where(rows, ys, big).min(dim=1).values
    y2 = torch.where(rows, ys, -1).max(dim=1).values + 1
    boxes = torch.stack([x1, y1, x2, y2], dim=1).float()
    empty = ~cols.any(dim=1)
    boxes[empty] = 0.0
    return boxes


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU `[N, M]` of xyxy boxes."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Greedy NMS: indices of kept boxes, highest score first (ties: lower index first).

    A box is suppressed when its IoU with an already kept box is strictly above `iou_thresh`.
    """
    n = boxes.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = torch.argsort(scores, descending=True, stable=True)
    iou = box_iou(boxes[order], boxes[order]).cpu()
    over = (iou > iou_thresh).numpy()
    suppressed = np.zeros(n, dtype=bool)
    keep = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= over[i]  # entries before i were decided already
    return order[torch.tensor(keep, dtype=torch.long, device=order.device)]


@dataclass
class MaskSet:
    """Masks found in one image, best predicted IoU first. Masks, boxes and areas are in the mask frame
    (`frame_hw`); `resized(H, W)` maps them to the image."""

    logits: torch.Tensor  # [N, h, w] float16
    masks: torch.Tensor  # [N, h, w] bool (logits > mask_threshold)
    boxes: torch.Tensor  # [N, 4] xyxy, exclusive x2/y2, mask-frame pixels
    pred_iou: torch.Tensor  # [N]
    stability: torch.Tensor  # [N]
    points: torch.Tensor  # [N, 2] (x, y) in [0, 1], the prompt point of each mask
    mask_threshold: float = 0.0

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    @property
    def areas(self) -> torch.Tensor:
        return self.masks.flatten(1).sum(1)

    @property
    def frame_hw(self) -> tuple[int, int]:
        return int(self.masks.shape[-2]), int(self.masks.shape[-1])

    def resized(self, height: int, width: int) -> MaskSet:
        """The same masks upsampled (bilinear on the logits, then thresholded) to `height x width`."""
        if self.frame_hw == (height, width):
            return self
        if len(self) == 0:
            logits = self.logits.new_zeros(0, height, width)
        else:
            logits = F.interpolate(self.logits[:, None].float(), size=(height, width), mode="bilinear",
                                   align_corners=False)[:, 0]
        masks = logits > self.mask_threshold
        return MaskSet(logits, masks, masks_to_boxes(masks), self.pred_iou, self.stability, self.points,
                       self.mask_threshold)


def generate_masks(predict: PredictFn, *, points_per_side: int = 16, points_per_batch: int = 64,
                   pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.92,
                   stability_score_offset: float = 1.0, mask_threshold: float = 0.0, box_nms_thresh: float = 0.7,
                   min_area_frac: float = 0.0, max_masks: int | None = None,
                   device: torch.device | str = "cpu") -> MaskSet:
    """Steps 1-5 of the module docstring for one image. See `PredictFn` for the `predict` contract."""
    grid = point_grid(points_per_side, device)
    kept_logits, kept_iou, kept_stab, kept_pts = [], [], [], []
    for start in range(0, grid.shape[0], points_per_batch):
        pts = grid[start:start + points_per_batch]
        logits, iou = predict(pts)
        if logits.ndim != 4 or iou.shape != logits.shape[:2]:
            raise ValueError(f"predict must return logits [P,M,h,w] and iou [P,M]; got {tuple(logits.shape)}, "
                             f"{tuple(iou.shape)}")
        m = logits.shape[1]
        logits = logits.flatten(0, 1).float()
        iou = iou.flatten().float()
        pts = pts.repeat_interleave(m, dim=0)
        keep = iou > pred_iou_thresh
        stab = stability_score(logits, mask_threshold, stability_score_offset)
        keep &= stab >= stability_score_thresh
        area = (logits > mask_threshold).flatten(1).sum(1)
        h, w = logits.shape[-2:]
        keep &= (area > 0) & (area >= min_area_frac * h * w)
        if keep.any():
            kept_logits.append(logits[keep].half())  # half the memory of the candidates awaiting NMS
            kept_iou.append(iou[keep])
            kept_stab.append(stab[keep])
            kept_pts.append(pts[keep])
    if not kept_logits:
        h = w = 1
        # frame size unknown without a kept mask: an empty set in a 1x1 frame (resized() fixes the frame)
        empty = torch.zeros(0, h, w, device=device)
        return MaskSet(empty, empty.bool(), torch.zeros(0, 4, device=device), torch.zeros(0, device=device),
                       torch.zeros(0, device=device), torch.zeros(0, 2, device=device), mask_threshold)
    logits = torch.cat(kept_logits)
    iou, stab, pts = torch.cat(kept_iou), torch.cat(kept_stab), torch.cat(kept_pts)
    masks = logits > mask_threshold
    boxes = masks_to_boxes(masks)
    keep = nms(boxes, iou, box_nms_thresh)
    if max_masks is not None:
        keep = keep[:max_masks]
    return MaskSet(logits[keep], masks[keep], boxes[keep], iou[keep], stab[keep], pts[keep], mask_threshold)


# -- SAM --------------------------------------------------------------------------------------------------------
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_sam_preprocessing(weights_dir: Path, model) -> tuple[int, tuple[int, int], list[float], list[float]]:
    """(longest edge, (pad h, pad w), mean, std) from the checkpoint's preprocessor config, else the model's."""
    size = int(model.config.vision_config.image_size)
    pad = (size, size)
    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    for name in ("preprocessor_config.json", "processor_config.json"):
        p = Path(weights_dir) / name
        if not p.exists():
            continue
        cfg = json.loads(p.read_text())
        cfg = cfg.get("image_processor", cfg)
        size = int((cfg.get("size") or {}).get("longest_edge", size))
        ps = cfg.get("pad_size") or {}
        pad = (int(ps.get("height", size)), int(ps.get("width", size)))
        mean = list(cfg.get("image_mean", mean))
        std = list(cfg.get("image_std", std))
        break
    return size, pad, mean, std


class SamMaskGenerator:
    """SAM automatic masks for a batch of same-size images: one batched image-encoder pass, then the point grid
    through the prompt encoder + mask decoder, filtered by `generate_masks`."""

    def __init__(self, model, *, longest_edge: int, pad_hw: tuple[int, int], mean, std, points_per_side: int = 16,
                 points_per_batch: int = 64, pred_iou_thresh: float = 0.88, stability_score_thresh: float = 0.92,
                 stability_score_offset: float = 1.0, box_nms_thresh: float = 0.7, min_area_frac: float = 0.0,
                 max_masks: int | None = None):
        self.model = model
        self.longest_edge = int(longest_edge)
        self.pad_hw = tuple(pad_hw)
        self.mean, self.std = list(mean), list(std)
        self.amg = dict(points_per_side=points_per_side, points_per_batch=points_per_batch,
                        pred_iou_thresh=pred_iou_thresh, stability_score_thresh=stability_score_thresh,
                        stability_score_offset=stability_score_offset, box_nms_thresh=box_nms_thresh,
                        min_area_frac=min_area_frac, max_masks=max_masks)

    def resized_hw(self, h: int, w: int) -> tuple[int, int]:
        scale = self.longest_edge / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    def preprocess(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> SAM input: longest side resized, normalized, zero-padded bottom/right."""
        from rewardtune.rewards.preprocess import normalize, resize

        h, w = pixels.shape[-2:]
        rh, rw = self.resized_hw(h, w)
        x = normalize(resize(pixels, (rh, rw), "bilinear").clamp(0, 1), self.mean, self.std)
        ph, pw = max(self.pad_hw[0], rh), max(self.pad_hw[1], rw)
        return F.pad(x, (0, pw - rw, 0, ph - rh))

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> list[MaskSet]:
        """Masks for each image of `pixels` [B,3,H,W], at the image resolution."""
        model = self.model
        dtype = next(model.parameters()).dtype
        h, w = pixels.shape[-2:]
        rh, rw = self.resized_hw(h, w)
        pv = self.preprocess(pixels).to(dtype)
        emb = model.get_image_embeddings(pv)
        pad_h, pad_w = pv.shape[-2:]
        out = []
        for i in range(pixels.shape[0]):
            e = emb[i:i + 1]

            def predict(pts: torch.Tensor, e=e) -> tuple[torch.Tensor, torch.Tensor]:
                coords = pts * torch.tensor([rw, rh], dtype=pts.dtype, device=pts.device)
                res = model(image_embeddings=e, input_points=coords[None, :, None, :].to(dtype),
                            input_labels=torch.ones(1, pts.shape[0], 1, dtype=torch.long, device=pts.device),
                            multimask_output=True)
                low = res.pred_masks[0]  # [P, 3, hl, wl] over the padded frame
                hl, wl = low.shape[-2:]
                vh, vw = max(1, math.ceil(rh * hl / pad_h)), max(1, math.ceil(rw * wl / pad_w))
                return low[..., :vh, :vw].float(), res.iou_scores[0].float()

            ms = generate_masks(predict, device=pixels.device, **self.amg)
            out.append(ms.resized(h, w))
        return out
