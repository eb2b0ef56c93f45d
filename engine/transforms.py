"""Pre- and post-processing shared by every backend.

Preprocessing follows the official recipe exactly: PIL bilinear resize of the longest side to
1024 (antialiased when shrinking), SAM's mean/std normalisation, zero padding bottom-right.
Post-processing upsamples low-res logits to the padded 1024 frame, crops, and resizes to the
original size; both bilinear steps are linear and separable, so they are applied as two small
matrix products whose matrices are built once per size (same result, a fraction of the work).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from threading import Lock

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGE_SIZE = 1024
LOW_RES_SIZE = 256
PIXEL_MEAN = np.array([123.675, 116.28, 103.53], dtype=np.float32)
PIXEL_STD = np.array([58.395, 57.12, 57.375], dtype=np.float32)
_MEAN = torch.from_numpy(PIXEL_MEAN).reshape(3, 1, 1)
_STD = torch.from_numpy(PIXEL_STD).reshape(3, 1, 1)


def target_size(height: int, width: int, long_side: int = IMAGE_SIZE) -> tuple[int, int]:
    """(h, w) after resizing so that the longest side is `long_side`. The short side is at
    least 1 pixel: the official rounding gives 0 for a side shorter than 1/2048 of the long one
    (a 1x3000 strip), which no resize can produce; every other size is the official one."""
    scale = long_side * 1.0 / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_longest_side(image: np.ndarray, long_side: int = IMAGE_SIZE) -> np.ndarray:
    """uint8 HxWx3 RGB -> uint8 hxwx3 with PIL's bilinear filter (as the official pipeline)."""
    h, w = image.shape[:2]
    newh, neww = target_size(h, w, long_side)
    if (newh, neww) == (h, w):
        return image
    return np.array(Image.fromarray(image).resize((neww, newh), Image.BILINEAR))


def check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError("image must be an HxWx3 numpy array")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError("image must not be empty")


def preprocess_image(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HxWx3 RGB -> (normalised, padded 1x3x1024x1024 float32, input size (h, w))."""
    pixels, input_size = image_to_pixels(image)
    return normalize_pixels(pixels, [input_size]), input_size


def image_to_pixels(image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
    """uint8 HxWx3 RGB -> (resized, zero-padded 1x3x1024x1024 uint8, input size (h, w)): the
    preprocessing before normalisation, a quarter of the bytes of its float result."""
    check_image(image)
    resized = resize_longest_side(np.ascontiguousarray(image))
    h, w = resized.shape[:2]
    out = torch.zeros((1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.uint8)
    out[0, :, :h, :w] = torch.from_numpy(resized).permute(2, 0, 1)
    return out, (h, w)


def normalize_pixels(
    pixels: torch.Tensor, input_sizes: Sequence[tuple[int, int]], dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """`image_to_pixels` batches (Bx3x1024x1024 uint8, on any device) -> SAM's normalisation,
    computed in float32, with the padding (outside each input size) exactly 0 as the official
    pipeline pads after normalising; cast to `dtype` last."""
    if pixels.dtype != torch.uint8 or pixels.ndim != 4 or pixels.shape[1:] != (3, 1024, 1024):
        raise ValueError(f"pixels must be Bx3x1024x1024 uint8, got {tuple(pixels.shape)}")
    if len(input_sizes) != pixels.shape[0]:
        raise ValueError("one input size per image")
    x = pixels.to(torch.float32)
    x.sub_(_MEAN.to(x.device)).div_(_STD.to(x.device))
    for i, (h, w) in enumerate(input_sizes):
        x[i, :, h:, :] = 0.0
        x[i, :, :h, w:] = 0.0
    return x.to(dtype)


def apply_coords(coords: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """...x2 (x, y) original pixels -> the 1024 frame (float64 math, as official)."""
    h, w = original_size
    newh, neww = target_size(h, w)
    out = np.array(coords, dtype=np.float64, copy=True)
    out[..., 0] = out[..., 0] * (neww / w)
    out[..., 1] = out[..., 1] * (newh / h)
    return out


def apply_boxes(boxes: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """...x4 XYXY original pixels -> the 1024 frame."""
    boxes = np.asarray(boxes, dtype=np.float64)
    return apply_coords(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)


class ResizeLongestSide:
    """segment-anything's transform object, for code ported from SamPredictor."""

    def __init__(self, target_length: int = IMAGE_SIZE) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return apply_coords(coords, (original_size[0], original_size[1]))

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return apply_boxes(boxes, (original_size[0], original_size[1]))

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        h, w = original_size[0], original_size[1]
        newh, neww = target_size(h, w, self.target_length)
        coords = coords.clone().to(torch.float)
        coords[..., 0] = coords[..., 0] * (neww / w)
        coords[..., 1] = coords[..., 1] * (newh / h)
        return coords

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return target_size(oldh, oldw, long_side_length)


def _resize_matrix(src: int, dst: int) -> torch.Tensor:
    """dst x src matrix equal to 1-D bilinear resizing with align_corners=False."""
    eye = torch.eye(src, dtype=torch.float64)[None, None]
    return F.interpolate(eye, size=(dst, src), mode="bilinear", align_corners=False)[0, 0]


class _UpscaleMatrices:
    """Bounded cache of (rows, cols) matrices per (input_size, original_size)."""

    def __init__(self, max_entries: int = 64) -> None:
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._max = max_entries
        self._lock = Lock()

    def get(
        self, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(input_size), tuple(original_size))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        up = _resize_matrix(LOW_RES_SIZE, IMAGE_SIZE)  # 1024 x 256
        (newh, neww), (h, w) = input_size, original_size
        rows = (_resize_matrix(newh, h) @ up[:newh]).to(torch.float32).contiguous()
        cols = (_resize_matrix(neww, w) @ up[:neww]).to(torch.float32).T.contiguous()
        with self._lock:
            self._cache[key] = (rows, cols)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return rows, cols


_MATRICES = _UpscaleMatrices()


def upscale_logits(
    low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """...x256x256 low-res logits -> ...xHxW logits at the original image size.

    Equal (to float rounding) to SAM's postprocess_masks: bilinear to 1024x1024, crop to the
    input size, bilinear to the original size.
    """
    rows, cols = _MATRICES.get(input_size, original_size)
    x = low_res_logits.to(torch.float32)
    rows, cols = rows.to(x.device), cols.to(x.device)
    return rows @ x @ cols


def postprocess_masks_reference(
    low_res_logits: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int]
) -> torch.Tensor:
    """The official two-step interpolation (kept for the unoptimised baseline and tests)."""
    x = F.interpolate(
        low_res_logits, (IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False
    )
    x = x[..., : input_size[0], : input_size[1]]
    return F.interpolate(x, tuple(original_size), mode="bilinear", align_corners=False)


def stability_score(
    logits: torch.Tensor, mask_threshold: float = 0.0, offset: float = 1.0
) -> torch.Tensor:
    """IoU between the masks thresholded at threshold+offset and threshold-offset, per map."""
    inter = (logits > (mask_threshold + offset)).sum((-1, -2), dtype=torch.int32)
    union = (logits > (mask_threshold - offset)).sum((-1, -2), dtype=torch.int32)
    return torch.where(
        union > 0, inter / union.clamp(min=1), torch.zeros_like(inter, dtype=torch.float32)
    )
