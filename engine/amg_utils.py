"""Helpers of the automatic mask generator: point grids, crop boxes, box NMS, mask boxes,
run-length encoding and small-region removal.

Everything here reproduces the behaviour of segment-anything's `utils/amg.py` and of
torchvision 0.15.1's CPU box NMS (which the official generator uses), without torchvision.
Masks are run-length encoded in column-major (COCO) order; an uncompressed RLE is
`{"size": [h, w], "counts": [zeros, ones, zeros, ...]}` and starts with a run of zeros.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Any

import numpy as np
import torch

# ---------------------------------------------------------------------------------------------
# Point grids and crops


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n)x2 points (x, y) in [0, 1], centred in an n x n grid of cells, row by row."""
    offset = 1.0 / (2 * n_per_side)
    one_side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(one_side[None, :], (n_per_side, 1))
    ys = np.tile(one_side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer 0..n_layers; layer i has int(n / scale**i) points per side."""
    return [build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)]


def generate_crop_boxes(
    im_size: tuple[int, ...], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (XYXY, ints) and their layer indices: the whole image (layer 0), then
    2**i x 2**i overlapping crops for layer i = 1..n_layers, column by column."""
    im_h, im_w = int(im_size[0]), int(im_size[1])
    short_side = min(im_h, im_w)
    boxes: list[list[int]] = [[0, 0, im_w, im_h]]
    layers: list[int] = [0]

    def crop_len(orig_len: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + orig_len) / n_crops))

    for i_layer in range(n_layers):
        n_per_side = 2 ** (i_layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / n_per_side))
        crop_w = crop_len(im_w, n_per_side, overlap)
        crop_h = crop_len(im_h, n_per_side, overlap)
        x0s = [int((crop_w - overlap) * i) for i in range(n_per_side)]
        y0s = [int((crop_h - overlap) * i) for i in range(n_per_side)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + crop_w, im_w), min(y0 + crop_h, im_h)])
            layers.append(i_layer + 1)
    return boxes, layers


def is_box_near_crop_edge(
    boxes: torch.Tensor, crop_box: list[int], orig_box: list[int], atol: float = 20.0
) -> torch.Tensor:
    """Per box (XYXY in the crop frame): does any side lie within `atol` of a crop edge that
    is not also an edge of the original image?"""
    crop_t = torch.as_tensor(crop_box, dtype=torch.float)
    orig_t = torch.as_tensor(orig_box, dtype=torch.float)
    boxes = uncrop_boxes_xyxy(boxes, crop_box).float()
    near_crop = torch.isclose(boxes, crop_t[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, orig_t[None, :], atol=atol, rtol=0)
    return torch.any(near_crop & ~near_image, dim=1)


def uncrop_boxes_xyxy(boxes: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([[x0, y0, x0, y0]], device=boxes.device)
    if boxes.ndim == 3:
        offset = offset.unsqueeze(1)
    return boxes + offset


def uncrop_points(points: torch.Tensor, crop_box: list[int]) -> torch.Tensor:
    x0, y0 = crop_box[0], crop_box[1]
    offset = torch.tensor([[x0, y0]], device=points.device)
    if points.ndim == 3:
        offset = offset.unsqueeze(1)
    return points + offset


def uncrop_mask(mask: np.ndarray, crop_box: list[int], orig_h: int, orig_w: int) -> np.ndarray:
    """Bool hxw mask of a crop -> orig_h x orig_w, False outside the crop."""
    x0, y0, x1, y1 = crop_box
    if x0 == 0 and y0 == 0 and x1 == orig_w and y1 == orig_h:
        return mask
    out = np.zeros((orig_h, orig_w), dtype=bool)
    out[y0:y1, x0:x1] = mask
    return out


def box_xyxy_to_xywh(box: torch.Tensor) -> torch.Tensor:
    out = box.clone()
    out[..., 2] = out[..., 2] - out[..., 0]
    out[..., 3] = out[..., 3] - out[..., 1]
    return out


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Nx4 XYXY -> N areas (x1 - x0) * (y1 - y0), in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


# ---------------------------------------------------------------------------------------------
# Scores and boxes of masks


def stability_scores(logits: np.ndarray, mask_threshold: float, offset: float) -> np.ndarray:
    """NxHxW float32 logits -> N float32 stability scores: IoU of the masks thresholded at
    threshold + offset and threshold - offset (thresholds rounded to float32, as torch does
    when it compares a float32 tensor with a Python number). An empty union gives NaN, as
    in SAM."""
    hi = np.float32(mask_threshold + offset)
    lo = np.float32(mask_threshold - offset)
    inter = np.count_nonzero(logits > hi, axis=(1, 2)).astype(np.float32)
    union = np.count_nonzero(logits > lo, axis=(1, 2)).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        return inter / union


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Bool NxHxW masks -> Nx4 XYXY int64 boxes with inclusive right/bottom pixel indices;
    an empty mask gives [0, 0, 0, 0] (as SAM's batched_mask_to_box)."""
    n, h, w = masks.shape
    out = np.zeros((n, 4), dtype=np.int64)
    if n == 0 or h == 0 or w == 0:
        return out
    rows = masks.any(axis=2)  # NxH
    cols = masks.any(axis=1)  # NxW
    out[:, 0] = cols.argmax(axis=1)
    out[:, 1] = rows.argmax(axis=1)
    out[:, 2] = w - 1 - cols[:, ::-1].argmax(axis=1)
    out[:, 3] = h - 1 - rows[:, ::-1].argmax(axis=1)
    out[~rows.any(axis=1)] = 0
    return out


# ---------------------------------------------------------------------------------------------
# Non-maximum suppression (torchvision 0.15.1 CPU semantics)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy box NMS. Boxes Nx4 XYXY; returns kept indices (int64), best score first.

    As torchvision's CPU kernel: stable descending sort by score, IoU computed in the boxes'
    dtype as inter / (area_i + area_j - inter), a box is suppressed when IoU > threshold
    (compared in double precision); zero-area pairs give NaN and never suppress."""
    n = int(boxes.shape[0])
    if n == 0:
        return torch.empty((0,), dtype=torch.int64)
    order = torch.sort(scores.detach().cpu(), stable=True, descending=True).indices.numpy()
    b = boxes.detach().cpu().numpy()
    x1, y1, x2, y2 = (np.ascontiguousarray(b[:, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for pos in range(n):
            i = order[pos]
            if suppressed[i]:
                continue
            keep.append(int(i))
            rest = order[pos + 1 :]
            if rest.size == 0:
                break
            w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
            h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
            inter = w * h
            iou = inter / (areas[i] + areas[rest] - inter)
            suppressed[rest[iou.astype(np.float64) > iou_threshold]] = True
    return torch.as_tensor(keep, dtype=torch.int64)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """NMS done independently per category `idxs`; kept indices by decreasing score.

    As torchvision 0.15.1: up to 1000 boxes, categories are separated by offsetting each
    category's boxes by category * (max coordinate + 1) and one NMS is run; above that,
    NMS runs per category and the kept indices are sorted by score."""
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64)
    if boxes.numel() > 4000:
        keep_mask = torch.zeros_like(scores, dtype=torch.bool)
        for category in torch.unique(idxs):
            current = torch.where(idxs == category)[0]
            keep_mask[current[nms(boxes[current], scores[current], iou_threshold)]] = True
        keep = torch.where(keep_mask)[0]
        return keep[scores[keep].sort(descending=True)[1]]
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)


# ---------------------------------------------------------------------------------------------
# Run-length encoding


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool HxW mask -> uncompressed column-major RLE (counts start with a run of zeros)."""
    h, w = mask.shape
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return {"size": [h, w], "counts": []}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    return {"size": [h, w], "counts": ([0] + counts) if flat[0] else counts}


def mask_to_coco_rle(mask: np.ndarray) -> dict[str, Any]:
    """Bool HxW mask -> COCO compressed RLE with a str `counts` (pycocotools); equal to
    `coco_encode_rle(mask_to_rle(mask))`."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask, dtype=np.uint8))
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


def rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Uncompressed RLE -> bool HxW mask (C-contiguous)."""
    h, w = rle["size"]
    counts = np.asarray(rle["counts"], dtype=np.int64)
    values = np.zeros(counts.shape[0], dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(w, h).T)


def area_from_rle(rle: dict[str, Any]) -> int:
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(uncompressed_rle: dict[str, Any]) -> dict[str, Any]:
    """Uncompressed RLE -> COCO compressed RLE with a str `counts` (pycocotools)."""
    from pycocotools import mask as mask_utils

    h, w = uncompressed_rle["size"]
    rle = mask_utils.frPyObjects(uncompressed_rle, h, w)
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle


# ---------------------------------------------------------------------------------------------
# Small regions


def remove_small_regions(
    mask: np.ndarray, area_thresh: float, mode: str
) -> tuple[np.ndarray, bool]:
    """Fill holes ("holes") or drop islands ("islands") smaller than `area_thresh` pixels
    (8-connected components, OpenCV). Returns the mask and whether it changed. When every
    island is small, the largest is kept."""
    import cv2

    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]  # label 0 is the background of `working`
    small = [i + 1 for i, s in enumerate(sizes) if s < area_thresh]
    if not small:
        return mask, False
    fill = [0, *small]
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:  # every island is small: keep the largest
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


__all__ = [
    "area_from_rle",
    "batched_nms",
    "box_area",
    "box_xyxy_to_xywh",
    "build_all_layer_point_grids",
    "build_point_grid",
    "coco_encode_rle",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "mask_to_coco_rle",
    "mask_to_rle",
    "masks_to_boxes",
    "nms",
    "remove_small_regions",
    "rle_to_mask",
    "stability_scores",
    "uncrop_boxes_xyxy",
    "uncrop_mask",
    "uncrop_points",
]
