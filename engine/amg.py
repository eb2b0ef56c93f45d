"""`EdgeSamAutomaticMaskGenerator`: segment-anything's `SamAutomaticMaskGenerator` for EdgeSAM
("everything" mode), with the same constructor arguments and output records.

EdgeSAM specifics (as the official EdgeSAM generator): each grid point is decoded with
`num_multimask_outputs=3` and `use_stability_score=True`, so `predicted_iou` -- the score
that `pred_iou_thresh` filters and NMS ranks -- is the stability score of the 256x256 low-res
logits (offset 1.0), while `stability_score` is recomputed on the logits upscaled to the
image with `stability_score_offset`.

Same results as the official code, less work: candidates are filtered by `predicted_iou`
(known from the low-res logits) before anything is upscaled, and upscaling is two small matrix
products (`engine.transforms.upscale_logits`) applied only to the survivors, in chunks.
`generate_from_embedding` runs on a precomputed (e.g. cached) embedding without the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from engine.amg_utils import (
    batched_nms,
    box_area,
    box_xyxy_to_xywh,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    mask_to_coco_rle,
    mask_to_rle,
    masks_to_boxes,
    remove_small_regions,
    stability_scores,
    uncrop_boxes_xyxy,
    uncrop_mask,
    uncrop_points,
)
from engine.backends.base import Backend
from engine.compat import zip_strict
from engine.core import MASK_THRESHOLD, ImageEmbedding, decode_points, encode_images
from engine.modeling import EdgeSam
from engine.modeling.prompt_encoder import merge_prompts
from engine.predictor import EdgeSamPredictor, as_backend
from engine.transforms import apply_coords, check_image, upscale_logits

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
# Upscaled float32 logits held at once while scoring and binarising candidates.
_UPSCALE_BUDGET_BYTES = 128 << 20


@dataclass(frozen=True)
class _PackedMask:
    """A bool mask of the region `frame` (XYXY) of the image, bit-packed (row-major)."""

    bits: np.ndarray
    frame: tuple[int, int, int, int]

    @staticmethod
    def pack_all(masks: np.ndarray, frame: list[int]) -> list[_PackedMask]:
        if masks.shape[0] == 0:
            return []
        bits = np.packbits(masks.reshape(masks.shape[0], -1), axis=1)
        box = (int(frame[0]), int(frame[1]), int(frame[2]), int(frame[3]))
        return [_PackedMask(row, box) for row in bits]

    def unpack(self, orig_h: int, orig_w: int) -> np.ndarray:
        x0, y0, x1, y1 = self.frame
        h, w = y1 - y0, x1 - x0
        mask = np.unpackbits(self.bits, count=h * w).view(bool).reshape(h, w)
        return uncrop_mask(mask, list(self.frame), orig_h, orig_w)


@dataclass
class _MaskData:
    """Candidate masks, one row each; boxes XYXY (inclusive), in the crop frame until the
    crop is finished and in the image frame after."""

    boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))
    iou_preds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    stability: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    points: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 2), dtype=torch.float64))
    crop_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros((0, 4), dtype=torch.int64))
    masks: list[_PackedMask] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)

    def filter(self, keep: torch.Tensor) -> None:
        """Keep rows by a bool mask or an index tensor (in that order)."""
        idx = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        self.boxes = self.boxes[idx]
        self.iou_preds = self.iou_preds[idx]
        self.stability = self.stability[idx]
        self.points = self.points[idx]
        self.crop_boxes = self.crop_boxes[idx]
        self.masks = [self.masks[i] for i in idx.tolist()]

    @staticmethod
    def cat(parts: list[_MaskData]) -> _MaskData:
        if not parts:
            return _MaskData()
        return _MaskData(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.iou_preds for p in parts]),
            torch.cat([p.stability for p in parts]),
            torch.cat([p.points for p in parts]),
            torch.cat([p.crop_boxes for p in parts]),
            [m for p in parts for m in p.masks],
        )


class EdgeSamAutomaticMaskGenerator:
    """Generates masks for a whole image from a grid of point prompts, then filters low
    quality and duplicate masks. Arguments as segment-anything's SamAutomaticMaskGenerator:

    points_per_side: grid points along one side (points_per_side**2 in all); None requires
      `point_grids`. points_per_batch: points decoded together.
    pred_iou_thresh: keep masks whose predicted_iou (low-res stability, see the module
      docstring) is > this (0 disables). stability_score_thresh: keep masks whose stability
      score at full resolution is >= this (0 disables). stability_score_offset: the logit
      shift used for that score.
    box_nms_thresh: box IoU above which the lower-scored duplicate is dropped, per crop.
    crop_n_layers: if > 0, also run on 2**i x 2**i crops for layers i = 1..crop_n_layers;
      crop_nms_thresh: NMS between crops (masks from smaller crops win); crop_overlap_ratio:
      crop overlap as a fraction of the short image side in layer 1;
      crop_n_points_downscale_factor: layer i uses points_per_side / factor**i points a side.
    point_grids: explicit grids in [0, 1] (one per layer) instead of points_per_side.
    min_mask_region_area: if > 0, fill holes and remove islands smaller than this many
      pixels, then rerun NMS.
    output_mode: "binary_mask" (bool HxW), "uncompressed_rle" or "coco_rle" (pycocotools).
    """

    def __init__(
        self,
        model: EdgeSam | Backend,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("exactly one of points_per_side or point_grids must be provided")
        if crop_n_layers < 0:
            raise ValueError(f"crop_n_layers must be >= 0, got {crop_n_layers}")
        if points_per_side is not None:
            self.point_grids = build_all_layer_point_grids(
                points_per_side, crop_n_layers, crop_n_points_downscale_factor
            )
        else:
            assert point_grids is not None
            if len(point_grids) < crop_n_layers + 1:
                raise ValueError(
                    f"point_grids has {len(point_grids)} grid(s); crop_n_layers={crop_n_layers} "
                    f"needs {crop_n_layers + 1}"
                )
            self.point_grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output_mode {output_mode!r}; use one of {OUTPUT_MODES}")
        if output_mode == "coco_rle":
            from pycocotools import mask as _mask_utils  # noqa: F401 - fail early if missing
        if min_mask_region_area > 0:
            import cv2  # noqa: F401 - fail early if missing
        if points_per_batch < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")

        self.backend = as_backend(model)
        self.predictor = EdgeSamPredictor(self.backend)  # for SamAutomaticMaskGenerator users
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = crop_n_layers
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode

    # -- public API --------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]:
        """uint8 HxWx3 RGB image -> one record per mask:

        segmentation (bool HxW array, or an RLE dict per output_mode), area (int), bbox
        (XYWH), predicted_iou, point_coords ([[x, y]] in image pixels), stability_score,
        crop_box (XYWH)."""
        check_image(image)
        if self.crop_n_layers == 0:
            return self.generate_from_embedding(encode_images(self.backend, [image])[0])
        orig_size = (int(image.shape[0]), int(image.shape[1]))
        crop_boxes, layer_idxs = generate_crop_boxes(
            orig_size, self.crop_n_layers, self.crop_overlap_ratio
        )
        parts = []
        for crop_box, layer_idx in zip_strict(crop_boxes, layer_idxs):
            x0, y0, x1, y1 = crop_box
            embedding = encode_images(self.backend, [image[y0:y1, x0:x1, :]])[0]
            parts.append(self._process_crop(embedding, crop_box, layer_idx, orig_size))
        data = _MaskData.cat(parts)
        if len(crop_boxes) > 1 and len(data):
            # Remove duplicates between crops; masks from smaller crops win.
            scores = 1 / box_area(data.crop_boxes)
            keep = batched_nms(
                data.boxes.float(),
                scores,
                torch.zeros_like(data.boxes[:, 0]),
                iou_threshold=self.crop_nms_thresh,
            )
            data.filter(keep)
        return self._finish(data, orig_size)

    @torch.inference_mode()
    def generate_from_embedding(self, image_embedding: ImageEmbedding) -> list[dict[str, Any]]:
        """Everything mode on a precomputed embedding (crop_n_layers must be 0: crops need
        the image itself). Returns the same records as `generate`."""
        if self.crop_n_layers != 0:
            raise ValueError(
                "generate_from_embedding needs crop_n_layers=0 (crop layers encode image crops); "
                "call generate(image) instead"
            )
        h, w = image_embedding.original_size
        orig_size = (int(h), int(w))
        data = self._process_crop(image_embedding, [0, 0, orig_size[1], orig_size[0]], 0, orig_size)
        return self._finish(data, orig_size)

    # -- internals ---------------------------------------------------------------------------
    def _finish(self, data: _MaskData, orig_size: tuple[int, int]) -> list[dict[str, Any]]:
        orig_h, orig_w = orig_size
        if self.min_mask_region_area > 0:
            data = self.postprocess_small_regions(
                data,
                self.min_mask_region_area,
                max(self.box_nms_thresh, self.crop_nms_thresh),
                orig_size,
            )
        records = []
        boxes = box_xyxy_to_xywh(data.boxes).tolist()
        crop_boxes = box_xyxy_to_xywh(data.crop_boxes).tolist()
        for i, packed in enumerate(data.masks):
            mask = packed.unpack(orig_h, orig_w)
            if self.output_mode == "binary_mask":
                segmentation: Any = mask
            elif self.output_mode == "coco_rle":
                segmentation = mask_to_coco_rle(mask)
            else:
                segmentation = mask_to_rle(mask)
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(np.count_nonzero(mask)),
                    "bbox": boxes[i],
                    "predicted_iou": data.iou_preds[i].item(),
                    "point_coords": [data.points[i].tolist()],
                    "stability_score": data.stability[i].item(),
                    "crop_box": crop_boxes[i],
                }
            )
        return records

    def _process_crop(
        self,
        embedding: ImageEmbedding,
        crop_box: list[int],
        layer_idx: int,
        orig_size: tuple[int, int],
    ) -> _MaskData:
        crop_size = embedding.original_size
        points_scale = np.array(crop_size, dtype=np.float64)[None, ::-1]
        points = self.point_grids[layer_idx] * points_scale
        parts = [
            self._process_batch(
                embedding, points[i : i + self.points_per_batch], crop_box, orig_size
            )
            for i in range(0, len(points), self.points_per_batch)
        ]
        data = _MaskData.cat(parts)
        keep = batched_nms(
            data.boxes.float(),
            data.iou_preds,
            torch.zeros_like(data.boxes[:, 0]),
            iou_threshold=self.box_nms_thresh,
        )
        data.filter(keep)
        data.boxes = uncrop_boxes_xyxy(data.boxes, crop_box)
        data.points = uncrop_points(data.points, crop_box)
        return data

    def _process_batch(
        self,
        embedding: ImageEmbedding,
        points: np.ndarray,
        crop_box: list[int],
        orig_size: tuple[int, int],
    ) -> _MaskData:
        orig_h, orig_w = orig_size
        crop_size = embedding.original_size
        coords = torch.as_tensor(apply_coords(points, crop_size), dtype=torch.float32)[:, None]
        labels = torch.ones((coords.shape[0], 1), dtype=torch.int64)
        coords, labels = merge_prompts((coords, labels), None)  # adds the padding point
        result = decode_points(self.backend, embedding, coords, labels, None, 3)
        n_out = result.low_res_logits.shape[1]
        low_res = result.low_res_logits.flatten(0, 1)
        iou_preds = result.stability_scores.flatten(0, 1)
        all_points = torch.as_tensor(np.repeat(points, n_out, axis=0))

        # Filter by predicted IoU before anything is upscaled.
        if self.pred_iou_thresh > 0.0:
            idx = (iou_preds > self.pred_iou_thresh).nonzero().flatten()
            low_res, iou_preds, all_points = low_res[idx], iou_preds[idx], all_points[idx]

        h, w = crop_size
        chunk = max(1, _UPSCALE_BUDGET_BYTES // (4 * h * w))
        parts = []
        for start in range(0, low_res.shape[0], chunk):
            sl = slice(start, start + chunk)
            logits = upscale_logits(low_res[sl], embedding.input_size, crop_size).numpy()
            stability = stability_scores(logits, MASK_THRESHOLD, self.stability_score_offset)
            masks = logits > np.float32(MASK_THRESHOLD)
            del logits
            keep = np.arange(masks.shape[0])
            if self.stability_score_thresh > 0.0:
                keep = np.flatnonzero(stability >= self.stability_score_thresh)
                masks = masks[keep]
            boxes = torch.from_numpy(masks_to_boxes(masks))
            near_edge = is_box_near_crop_edge(boxes, crop_box, [0, 0, orig_w, orig_h])
            if near_edge.any():
                inner = (~near_edge).nonzero().flatten()
                keep, masks, boxes = keep[inner.numpy()], masks[inner.numpy()], boxes[inner]
            idx = torch.from_numpy(keep)
            parts.append(
                _MaskData(
                    boxes=boxes,
                    iou_preds=iou_preds[sl][idx],
                    stability=torch.from_numpy(stability[keep]),
                    points=all_points[sl][idx],
                    crop_boxes=torch.tensor([crop_box], dtype=torch.int64).repeat(len(keep), 1),
                    masks=_PackedMask.pack_all(masks, crop_box),
                )
            )
        return _MaskData.cat(parts)

    @staticmethod
    def postprocess_small_regions(
        mask_data: _MaskData, min_area: int, nms_thresh: float, orig_size: tuple[int, int]
    ) -> _MaskData:
        """Fill small holes and remove small islands in every mask, then rerun box NMS
        preferring masks that needed no change (as SAM). Edits `mask_data` in place."""
        if len(mask_data) == 0:
            return mask_data
        orig_h, orig_w = orig_size
        new_masks: list[np.ndarray] = []
        scores: list[float] = []
        for packed in mask_data.masks:
            mask = packed.unpack(orig_h, orig_w)
            mask, changed_holes = remove_small_regions(mask, min_area, mode="holes")
            mask, changed_islands = remove_small_regions(mask, min_area, mode="islands")
            new_masks.append(mask)
            scores.append(float(not (changed_holes or changed_islands)))
        boxes = torch.from_numpy(
            np.concatenate([masks_to_boxes(m[None]) for m in new_masks], axis=0)
        )
        keep = batched_nms(
            boxes.float(),
            torch.as_tensor(scores),
            torch.zeros_like(boxes[:, 0]),
            iou_threshold=nms_thresh,
        )
        for i in keep.tolist():
            if scores[i] == 0.0:  # changed: store the new mask and box
                mask_data.masks[i] = _PackedMask.pack_all(
                    new_masks[i][None], [0, 0, orig_w, orig_h]
                )[0]
                mask_data.boxes[i] = boxes[i]
        mask_data.filter(keep)
        return mask_data


__all__ = ["EdgeSamAutomaticMaskGenerator"]
