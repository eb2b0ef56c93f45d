"""The decoder in segment-anything's published ONNX signature, for clients that decode locally.

segment-anything's `scripts/export_onnx_model.py --return-single-mask` (SamOnnxModel) is the
signature browsers and annotation tools already speak:

- inputs `image_embeddings` 1x256x64x64, `point_coords` 1xNx2 (1024 frame), `point_labels` 1xN
  (-1 padding, 0 background, 1 foreground, 2/3 box corners), `mask_input` 1x1x256x256,
  `has_mask_input` 1, `orig_im_size` 2 as (height, width); all float32;
- outputs `masks` 1x1xHxW logits at the original size, `iou_predictions` 1x1,
  `low_res_masks` 1x1x256x256 (feed back as `mask_input` to refine).

One mask is returned: token 0 (the single-mask output) when more than two points are given,
otherwise the best of the three multimask outputs by predicted IoU; SamOnnxModel's score
re-weighting, reproduced exactly, makes that choice without control flow.

The `multimask` variant is that script without `--return-single-mask`: all four masks
(token 0, then the three multimask outputs), their IoU predictions and low-res logits; the web
page uses it to offer 1 or 3 candidates as /v1/segment does.

The `cvat` variant answers CVAT's SAM plugin (cvat-ui/plugins/sam inference.worker.ts): the same
inputs, clicks given without the padding point (the decoder appends it; CVAT's index.tsx stopped
sending it at be396074); outputs `masks` uint8 (0 or 255) cropped to the mask's bounding box,
its inclusive bounds `xtl`, `ytl`, `xbr`, `ybr` in original pixels, and `low_res_masks`.

Built from our own modules (EdgeSAM's prompt encoder and mask decoder are SAM's); EdgeSAM's
official ONNX decoder differs (no `orig_im_size`, no selection).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.export.to_onnx import _export, model_fingerprint
from engine.modeling import EdgeSam
from engine.onnx_format import DEFAULT_OPSET, write_metadata

SAM_FORMAT_NAME = "segment-anything"
VARIANTS = ("sam", "multimask", "cvat")
SAM_INPUTS = (
    "image_embeddings",
    "point_coords",
    "point_labels",
    "mask_input",
    "has_mask_input",
    "orig_im_size",
)
SAM_OUTPUTS = ("masks", "iou_predictions", "low_res_masks")
CVAT_OUTPUTS = ("xtl", "ytl", "xbr", "ybr", "masks", "low_res_masks")
IMAGE_SIZE = 1024


class SamOnnxDecoder(nn.Module):
    """Prompt encoder + mask decoder + selection + postprocessing, traced for export."""

    def __init__(self, model: EdgeSam, variant: str = "sam") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}")
        self.model = model.eval()
        self.variant = variant
        self.register_buffer("dense_pe", model.prompt_encoder.get_dense_pe().detach(), False)
        num_tokens = model.mask_decoder.num_mask_tokens
        self.register_buffer(
            "score_reweight", torch.tensor([[1000.0] + [0.0] * (num_tokens - 1)]), False
        )

    def select_masks(
        self, masks: torch.Tensor, iou_preds: torch.Tensor, num_points: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # SamOnnxModel.select_masks: with more than 2.5 points token 0 wins by +1000s, below
        # it loses by as much, so the best multimask output is taken.
        score = iou_preds + (num_points - 2.5) * self.score_reweight
        best = torch.argmax(score, dim=1)
        rows = torch.arange(masks.shape[0])
        return masks[rows, best, :, :].unsqueeze(1), iou_preds[rows, best].unsqueeze(1)

    @staticmethod
    def _prepadded_size(orig_im_size: torch.Tensor) -> torch.Tensor:
        size = orig_im_size.to(torch.float32)
        scale = IMAGE_SIZE / torch.max(size)
        return torch.floor(scale * size + 0.5).to(torch.int64)

    def mask_postprocessing(self, masks: torch.Tensor, orig_im_size: torch.Tensor) -> torch.Tensor:
        masks = F.interpolate(
            masks, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
        )
        pre = self._prepadded_size(orig_im_size)
        masks = masks[..., : pre[0], : pre[1]]
        orig = orig_im_size.to(torch.int64)
        return F.interpolate(masks, size=(orig[0], orig[1]), mode="bilinear", align_corners=False)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor,
        point_labels: torch.Tensor,
        mask_input: torch.Tensor,
        has_mask_input: torch.Tensor,
        orig_im_size: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        if self.variant == "cvat":
            # CVAT's plugin (index.tsx since be396074) sends its clicks without SAM's padding
            # point; the decoder adds it, as segment-anything's demo does for a click prompt.
            point_coords = torch.cat([point_coords, point_coords[:, :1] * 0.0], dim=1)
            point_labels = torch.cat([point_labels, point_labels[:, :1] * 0.0 - 1.0], dim=1)
        pe = self.model.prompt_encoder
        sparse = pe.embed_labeled_points(point_coords, point_labels)
        no_mask = pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        dense = has_mask_input * pe.embed_masks(mask_input) + (1 - has_mask_input) * no_mask
        logits, iou = self.model.mask_decoder.predict_all(
            image_embeddings, self.dense_pe, sparse, dense, None
        )
        if self.variant == "multimask":
            return self.mask_postprocessing(logits, orig_im_size), iou, logits
        low_res, scores = self.select_masks(logits, iou, point_coords.shape[1])
        masks = self.mask_postprocessing(low_res, orig_im_size)
        if self.variant == "sam":
            return masks, scores, low_res
        return (*_cvat_crop(masks), low_res)


def _cvat_crop(masks: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """1x1xHxW logits -> (xtl, ytl, xbr, ybr, uint8 0/255 mask cropped to those inclusive
    bounds). An empty mask gives bounds (0, 0, 0, 0) and its top-left pixel."""
    binary = masks[0, 0] > 0.0
    h, w = binary.shape[0], binary.shape[1]
    rows = binary.any(dim=1)
    cols = binary.any(dim=0)
    row_idx = torch.arange(h, dtype=torch.int64)
    col_idx = torch.arange(w, dtype=torch.int64)
    # argmax of a 0/1 vector is its first 1; the last 1 is found on the reversed ranks
    ytl = torch.argmax(rows.to(torch.int64) * (h - row_idx))
    ybr = torch.argmax(rows.to(torch.int64) * (row_idx + 1))
    xtl = torch.argmax(cols.to(torch.int64) * (w - col_idx))
    xbr = torch.argmax(cols.to(torch.int64) * (col_idx + 1))
    crop = binary[ytl : ybr + 1, xtl : xbr + 1].to(torch.uint8) * 255
    as_float = [v.to(torch.float32).reshape(1) for v in (xtl, ytl, xbr, ybr)]
    return (*as_float, crop[None, None].to(torch.uint8))


def export_sam_decoder(
    model: EdgeSam,
    path: str | os.PathLike[str],
    variant: str = "sam",
    opset: int = DEFAULT_OPSET,
    fingerprint: str = "",
) -> str:
    """Write the decoder in segment-anything's signature (or CVAT's) to `path`; returns the
    weights fingerprint written into its metadata (`fingerprint`, else the module's own)."""
    model = model.eval().float()
    module = SamOnnxDecoder(model, variant)
    example = (
        torch.randn((1, 256, 64, 64)),
        torch.randint(0, IMAGE_SIZE, (1, 5, 2)).to(torch.float32),
        torch.tensor([[1.0, 0.0, 1.0, 2.0, 3.0]]),
        torch.randn((1, 1, 256, 256)),
        torch.tensor([1.0]),
        torch.tensor([1500.0, 2250.0]),
    )
    axes = {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}}
    outputs = CVAT_OUTPUTS if variant == "cvat" else SAM_OUTPUTS
    if variant != "cvat":
        axes.update({"masks": {2: "height", 3: "width"}})
    else:
        axes.update({"masks": {2: "mask_height", 3: "mask_width"}})
    target = Path(path)
    _export(module, example, target, SAM_INPUTS, outputs, axes, opset)
    fingerprint = fingerprint or model_fingerprint(model)
    write_metadata(
        target,
        {
            "edgesam.format": SAM_FORMAT_NAME,
            "edgesam.variant": variant,
            "edgesam.role": "decoder",
            "edgesam.fingerprint": fingerprint,
            "edgesam.opset": str(opset),
            "edgesam.torch": torch.__version__,
        },
    )
    return fingerprint


__all__ = [
    "CVAT_OUTPUTS",
    "SAM_INPUTS",
    "SAM_OUTPUTS",
    "VARIANTS",
    "SamOnnxDecoder",
    "export_sam_decoder",
]
