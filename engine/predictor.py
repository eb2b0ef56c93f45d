"""`EdgeSamPredictor`: a drop-in for segment-anything's `SamPredictor` (and EdgeSAM's).

For library users who work on one image at a time. It holds the current image's embedding;
the service does not use it (it passes embeddings explicitly through `engine.core`).

Differences from SamPredictor that come from EdgeSAM: `num_multimask_outputs` (1, 3 or 4)
next to SAM's `multimask_output`, and `use_stability_score`, which replaces the returned
scores by the stability of each low-res mask (default False in `predict`, True in
`predict_torch`, as in EdgeSAM). EdgeSAM's `predict(features, ...)` takes precomputed
features first; pass them as `features=` (a 4-D tensor given first positionally is also
recognised).
"""

from __future__ import annotations

import os

import numpy as np
import torch

from engine.backends.base import Backend
from engine.backends.torch_backend import TorchBackend
from engine.core import (
    MASK_THRESHOLD,
    ImageEmbedding,
    decode_points,
    encode_image_with_priors,
    encode_images,
    prior_box,
    with_prior_box,
)
from engine.modeling import EdgeSam
from engine.modeling.prompt_encoder import merge_prompts
from engine.priors import GranularityPriors, load_priors
from engine.transforms import IMAGE_SIZE, ResizeLongestSide, upscale_logits


def as_backend(model: EdgeSam | Backend) -> Backend:
    """Accept an `EdgeSam` module (wrapped in the torch backend) or any Backend."""
    if isinstance(model, Backend):
        return model
    if isinstance(model, EdgeSam):
        device = str(model.device)
        return TorchBackend(model, device=device)
    raise TypeError(f"expected an EdgeSam module or an engine Backend, got {type(model)!r}")


def _num_outputs(multimask_output: bool | None, num_multimask_outputs: int | None) -> int:
    if num_multimask_outputs is not None:
        return int(num_multimask_outputs)
    if multimask_output is None:
        return 3
    return 3 if multimask_output else 1


_SAM_PREDICT_ARGS = (
    "point_coords",
    "point_labels",
    "box",
    "mask_input",
    "multimask_output",
    "return_logits",
)
_EDGESAM_PREDICT_ARGS = (
    "features",
    "point_coords",
    "point_labels",
    "box",
    "mask_input",
    "num_multimask_outputs",
    "return_logits",
    "use_stability_score",
)
_SAM_PREDICT_TORCH_ARGS = (
    "point_coords",
    "point_labels",
    "boxes",
    "mask_input",
    "multimask_output",
    "return_logits",
)
_EDGESAM_PREDICT_TORCH_ARGS = (
    "features",
    "point_coords",
    "point_labels",
    "boxes",
    "mask_input",
    "num_multimask_outputs",
    "return_logits",
    "use_stability_score",
)


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict:
    if len(args) > len(names):
        raise TypeError(f"expected at most {len(names)} positional arguments, got {len(args)}")
    bound = dict(zip(names, args))
    for key, value in kwargs.items():
        if key in bound:
            raise TypeError(f"got multiple values for argument {key!r}")
        bound[key] = value
    return bound


class EdgeSamPredictor:
    """set_image once, then predict per prompt; see the module docstring."""

    def __init__(
        self, sam_model: EdgeSam | Backend, priors: str | os.PathLike[str] | None = None
    ) -> None:
        """`priors`: a checkpoint holding EdgeSAM's optional granularity-priors head
        (`fpn.*`/`rpn_head.*`, see engine.priors), or the loaded module. With it, a
        point-only prompt also gets the best-scoring proposal that contains its first
        foreground point as a box prompt, as the paper describes (`use_priors=False` in
        `predict` turns that off per call). Needs the PyTorch backend."""
        self.model = as_backend(sam_model)
        self.transform = ResizeLongestSide(IMAGE_SIZE)
        self.mask_threshold = MASK_THRESHOLD
        self.priors = None
        if priors is not None:
            if getattr(self.model, "model", None) is None:
                raise ValueError("granularity priors need the PyTorch backend")
            self.priors = priors if isinstance(priors, GranularityPriors) else load_priors(priors)
        self.reset_image()

    # -- image ------------------------------------------------------------------------------
    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        """uint8 HxWx3 image in `image_format` ("RGB" or "BGR")."""
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        if image_format == "BGR":
            image = np.ascontiguousarray(image[..., ::-1])
        self.reset_image()
        if self.priors is None:
            self._image = encode_images(self.model, [image])[0]
        else:
            self._image = encode_image_with_priors(self.model, self.priors, image)
        self._set_sizes()

    def prior_box(self, point_1024: torch.Tensor) -> torch.Tensor | None:
        """The proposal (1x4, 1024 frame) the priors pick for a point (x, y), or None."""
        if self._image is None:
            return None
        return prior_box(self._image, point_1024)

    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """1x3xhxw resized (not normalised) image, as SamPredictor.set_torch_image."""
        if transformed_image.ndim != 4 or transformed_image.shape[1] != 3:
            raise ValueError("set_torch_image expects a 1x3xHxW tensor")
        if max(transformed_image.shape[2:]) != IMAGE_SIZE:
            raise ValueError(f"the long side of the transformed image must be {IMAGE_SIZE}")
        self.reset_image()
        h, w = transformed_image.shape[-2:]
        mean = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
        std = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
        x = (transformed_image.float().cpu() - mean) / std
        x = torch.nn.functional.pad(x, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))
        emb = self.model.encode(x)
        size = (int(original_image_size[0]), int(original_image_size[1]))
        self._image = ImageEmbedding(emb[:1].float(), size, (int(h), int(w)))
        self._set_sizes()

    def set_embedding(self, image_embedding: ImageEmbedding) -> None:
        """Use an embedding computed elsewhere (e.g. fetched from a cache)."""
        self.reset_image()
        self._image = image_embedding
        self._set_sizes()

    def _set_sizes(self) -> None:
        assert self._image is not None
        self.features = self._image.embedding
        self.original_size = self._image.original_size
        self.input_size = self._image.input_size
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The current image's embedding, 1x256x64x64."""
        if not self.is_image_set or self.features is None:
            raise RuntimeError(
                "An image must be set with .set_image(...) to generate an embedding."
            )
        return self.features

    def reset_image(self) -> None:
        self._image: ImageEmbedding | None = None
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self.orig_h = self.orig_w = self.input_h = self.input_w = None

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def _embedding_for(self, features: torch.Tensor | None) -> ImageEmbedding:
        if not self.is_image_set or self._image is None:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        if features is None:
            return self._image
        return ImageEmbedding(
            features.reshape(1, 256, 64, 64).float().cpu(), self.original_size, self.input_size
        )

    # -- prediction ---------------------------------------------------------------------------
    def predict(self, *args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts in original pixels -> (masks CxHxW, scores C, low-res logits Cx256x256).

        SAM's order: predict(point_coords, point_labels, box, mask_input, multimask_output,
        return_logits); EdgeSAM's: predict(features, point_coords, point_labels, box,
        mask_input, num_multimask_outputs, return_logits, use_stability_score), recognised
        by a 4-D tensor in first place. Keywords work for both. point_coords Nx2 (x, y) with
        point_labels N (1 fg, 0 bg); box length-4 XYXY; mask_input 1x256x256 low-res logits.
        """
        names = _SAM_PREDICT_ARGS
        if args and isinstance(args[0], torch.Tensor) and args[0].ndim == 4:
            names = _EDGESAM_PREDICT_ARGS
        return self._predict(**_bind(names, args, kwargs))

    def _predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        features: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
        use_stability_score: bool = False,
        use_priors: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        image = self._embedding_for(features)
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            coords = self.transform.apply_coords(np.asarray(point_coords), self.original_size)
            labels = np.asarray(point_labels, dtype=np.int64).reshape(1, -1)
            points = (
                torch.as_tensor(coords, dtype=torch.float32).reshape(1, -1, 2),
                torch.as_tensor(labels),
            )
        boxes = None
        if box is not None:
            box_1024 = self.transform.apply_boxes(np.asarray(box), self.original_size)
            boxes = torch.as_tensor(box_1024, dtype=torch.float32).reshape(-1, 4)[:1]
        mask_t = None
        if mask_input is not None:
            mask_t = torch.as_tensor(np.asarray(mask_input), dtype=torch.float32)[None]
        masks, scores, low_res = self._predict_1024(
            image,
            points,
            boxes,
            mask_t,
            _num_outputs(multimask_output, num_multimask_outputs),
            return_logits,
            use_stability_score,
            use_priors,
        )
        return masks[0].numpy(), scores[0].numpy(), low_res[0].numpy()

    def predict_torch(
        self, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched prompts already in the 1024 frame (BxNx2, BxN, Bx4, Bx1x256x256) ->
        (masks BxCxHxW, scores BxC, low-res logits BxCx256x256). Argument orders as in
        `predict` (boxes instead of box); use_stability_score defaults to True here."""
        names = _SAM_PREDICT_TORCH_ARGS
        if args and (args[0] is None or (isinstance(args[0], torch.Tensor) and args[0].ndim == 4)):
            names = _EDGESAM_PREDICT_TORCH_ARGS
        return self._predict_torch(**_bind(names, args, kwargs))

    def _predict_torch(
        self,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool | None = None,
        return_logits: bool = False,
        features: torch.Tensor | None = None,
        num_multimask_outputs: int | None = None,
        use_stability_score: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image = self._embedding_for(features)
        points = None
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            points = (point_coords.float().cpu(), point_labels.cpu())
        return self._predict_1024(
            image,
            points,
            None if boxes is None else boxes.float().cpu().reshape(-1, 4),
            None if mask_input is None else mask_input.float().cpu(),
            _num_outputs(multimask_output, num_multimask_outputs),
            return_logits,
            use_stability_score,
        )

    def _predict_1024(
        self,
        image: ImageEmbedding,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        num_outputs: int,
        return_logits: bool,
        use_stability_score: bool,
        use_priors: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        coords, labels = merge_prompts(points, boxes)
        if use_priors:  # no-op without proposals (no priors, or features given by the caller)
            coords, labels = with_prior_box(image, coords, labels)
        result = decode_points(self.model, image, coords, labels, mask_input, num_outputs)
        scores = result.stability_scores if use_stability_score else result.iou_predictions
        logits = upscale_logits(result.low_res_logits, image.input_size, image.original_size)
        masks = logits if return_logits else logits > self.mask_threshold
        return masks, scores, result.low_res_logits


__all__ = ["EdgeSamPredictor", "as_backend"]
