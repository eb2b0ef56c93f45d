"""The stateless core the service and the predictor share.

    emb = encode_images(backend, [image])[0]          # once per image
    res = decode(backend, emb, point_coords=..., point_labels=..., box=...)   # per click
    masks = res.masks()                                # bool at the original size

Everything here takes the embedding explicitly: no hidden per-image state, so any thread or
replica can decode any cached embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from engine.backends.base import Backend, UnsupportedPrompt
from engine.modeling.mask_decoder import mask_slice
from engine.modeling.prompt_encoder import LABEL_FOREGROUND, LABEL_PADDING, merge_prompts
from engine.priors import encode_with_priors, prior_boxes_for_points
from engine.transforms import (
    apply_boxes,
    apply_coords,
    image_to_pixels,
    preprocess_image,
    stability_score,
    upscale_logits,
)

MASK_THRESHOLD = 0.0
STABILITY_OFFSET = 1.0


@dataclass(frozen=True)
class ImageEmbedding:
    """One image's embedding plus the sizes needed to map prompts and masks.

    embedding: 1x256x64x64 float32; original_size and input_size are (h, w);
    proposals: Nx5 (x0, y0, x1, y1 in the 1024 frame, score) from the optional
    granularity-priors head, or None."""

    embedding: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    proposals: torch.Tensor | None = None


@dataclass
class DecodeResult:
    """Low-res logits BxCx256x256, IoU predictions BxC and stability scores BxC of the
    selected mask tokens, for B prompts on one image."""

    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor
    stability_scores: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]

    def logits(self, index: tuple[int, int] | None = None) -> torch.Tensor:
        """Upscaled logits at the original size: all (BxCxHxW) or one (b, c) -> HxW."""
        src = self.low_res_logits if index is None else self.low_res_logits[index]
        return upscale_logits(src, self.input_size, self.original_size)

    def masks(self, index: tuple[int, int] | None = None) -> torch.Tensor:
        """Boolean masks at the original size (logits > 0)."""
        return self.logits(index) > MASK_THRESHOLD


def encode_images(backend: Backend, images: Sequence[np.ndarray]) -> list[ImageEmbedding]:
    """uint8 RGB HxWx3 images -> one ImageEmbedding each, encoded as one batch."""
    if not images:
        return []
    tensors, sizes = [], []
    for image in images:
        pixels, input_size = image_to_pixels(image)
        tensors.append(pixels)
        sizes.append(((int(image.shape[0]), int(image.shape[1])), input_size))
    embeddings = backend.encode_pixels(torch.cat(tensors, dim=0), [inp for _, inp in sizes])
    return [
        ImageEmbedding(embeddings[i : i + 1].float(), orig, inp)
        for i, (orig, inp) in enumerate(sizes)
    ]


def encode_image_with_priors(
    backend: Backend, priors: torch.nn.Module, image: np.ndarray
) -> ImageEmbedding:
    """Embedding plus granularity-prior proposals (EdgeSAM's optional box head on the
    encoder's multi-scale features); needs the PyTorch backend (`backend.model`)."""
    model = getattr(backend, "model", None)
    if model is None:
        raise UnsupportedPrompt("granularity priors need the PyTorch backend")
    x, input_size = preprocess_image(image)
    with torch.inference_mode():
        emb, found = encode_with_priors(model, priors, x.to(model.device))
    boxes, scores = found[0]
    proposals = torch.cat([boxes.float(), scores.float()[:, None]], dim=1).cpu()
    size = (int(image.shape[0]), int(image.shape[1]))
    return ImageEmbedding(emb[:1].float().cpu(), size, input_size, proposals)


def prior_box(image: ImageEmbedding, point_1024: torch.Tensor) -> torch.Tensor | None:
    """The proposal (1x4, 1024 frame) the priors pick for one point (x, y in the 1024 frame):
    the best-scoring of the nearest proposals that contain it; None without one."""
    if image.proposals is None or image.proposals.numel() == 0:
        return None
    boxes, scores = image.proposals[:, :4], image.proposals[:, 4]
    box, found = prior_boxes_for_points(boxes, scores, point_1024.reshape(1, 2).float())
    return box[:1].float() if bool(found[0]) else None


def with_prior_box(
    image: ImageEmbedding, coords_1024: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For a point-only prompt (1xNx2 with its padding point, 1xN), add the prior box of its
    first foreground point as box corners, as the EdgeSAM paper does; else unchanged."""
    if coords_1024.shape[0] != 1 or bool((labels >= 2).any()):
        return coords_1024, labels
    foreground = (labels[0] == LABEL_FOREGROUND).nonzero()
    if len(foreground) == 0:
        return coords_1024, labels
    box = prior_box(image, coords_1024[0, int(foreground[0])])
    if box is None:
        return coords_1024, labels
    keep = labels[0] != LABEL_PADDING
    return merge_prompts((coords_1024[:, keep], labels[:, keep]), box)


def prompts_to_points(
    original_size: tuple[int, int],
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts in original pixels -> labelled points in the 1024 frame, BxNx2 and BxN.

    point_coords Nx2 with labels N (shared by every box), boxes Bx4 XYXY (B >= 1) or None.
    Points come first, then box corners (labels 2, 3); a point-only prompt gets the padding
    point (0, 0) with label -1, as SAM's prompt encoder adds.
    """
    points = None
    if point_coords is not None:
        coords = np.asarray(point_coords, dtype=np.float64).reshape(-1, 2)
        if point_labels is None:
            raise ValueError("point_labels must accompany point_coords")
        labels = np.asarray(point_labels).reshape(-1)
        if labels.shape[0] != coords.shape[0]:
            raise ValueError("point_coords and point_labels differ in length")
        coords = apply_coords(coords, original_size).astype(np.float32)
        points = (torch.from_numpy(coords)[None], torch.from_numpy(labels.astype(np.int64))[None])
    box_t = None
    if boxes is not None:
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        box_t = torch.from_numpy(apply_boxes(b, original_size).astype(np.float32))
    return merge_prompts(points, box_t)


def decode_points(
    backend: Backend,
    image: ImageEmbedding,
    coords_1024: torch.Tensor,
    labels: torch.Tensor,
    mask_input: torch.Tensor | None = None,
    num_multimask_outputs: int = 1,
) -> DecodeResult:
    """Decode labelled points already in the 1024 frame (BxNx2, BxN)."""
    mask_slice(num_multimask_outputs)  # validates before any work
    if mask_input is not None:
        if not backend.info.supports_mask_input:
            raise UnsupportedPrompt(
                f"the {backend.info.name} model in use takes no mask_input "
                "(official ONNX decoders have none)"
            )
        mask_input = mask_input.to(torch.float32).reshape(-1, 1, 256, 256)
        if mask_input.shape[0] == 1 and coords_1024.shape[0] > 1:
            mask_input = mask_input.expand(coords_1024.shape[0], -1, -1, -1)
    logits, iou = backend.decode(
        image.embedding, coords_1024, labels, mask_input, num_multimask_outputs
    )
    return DecodeResult(
        logits,
        iou,
        stability_score(logits, MASK_THRESHOLD, STABILITY_OFFSET),
        image.original_size,
        image.input_size,
    )


def decode(
    backend: Backend,
    image: ImageEmbedding,
    point_coords: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    mask_input: np.ndarray | torch.Tensor | None = None,
    num_multimask_outputs: int = 1,
) -> DecodeResult:
    """Decode prompts in original pixels: points (Nx2 + labels, 1 fg / 0 bg) and/or boxes
    (Bx4 XYXY; several boxes give one result each, decoded as one batch), optional
    mask_input 1x256x256 (or Bx1x256x256) low-res logits from a previous answer."""
    coords, labels = prompts_to_points(image.original_size, point_coords, point_labels, boxes)
    mi = None if mask_input is None else torch.as_tensor(np.asarray(mask_input, np.float32))
    return decode_points(backend, image, coords, labels, mi, num_multimask_outputs)
