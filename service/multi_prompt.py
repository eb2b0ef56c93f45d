"""Many objects in one segment request (`prompts: [{points, labels, box, mask_input_id}, ...]`).

Each object is turned into labelled points in the 1024 frame on its own (its points, then its
box corners; a padding point where it has no box, as SAM's prompt encoder adds), then objects
are decoded together: one decoder batch for every object of the same prompt shape (token
count and whether it has a mask input). Objects of one shape, the usual case (one click or one
box each), are one batch. Objects of different shapes are not padded into one batch because
padding tokens take part in the decoder's attention and would change the masks: each object
gets exactly the masks a request of its own would get.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, NamedTuple

import numpy as np
import torch

from engine.backends.base import Backend, BackendError, UnsupportedPrompt
from engine.core import (
    DecodeResult,
    ImageEmbedding,
    decode_points,
    prompts_to_points,
    with_prior_box,
)
from service import codecs
from service.errors import BackendFailure, UnsupportedPromptError
from service.metrics import Metrics
from service.schemas import MaskItem, SegmentRequest

log = logging.getLogger(__name__)


class ObjectPrompts(NamedTuple):
    """One object's validated prompts in original pixels."""

    points: np.ndarray | None  # Nx2
    labels: np.ndarray | None  # N
    box: np.ndarray | None  # 1x4


def decode_objects(
    backend: Backend,
    emb: ImageEmbedding,
    objects: list[ObjectPrompts],
    mask_inputs: list[torch.Tensor | None],
    req: SegmentRequest,
    metrics: Metrics,
    finite: Callable[[float], float],
) -> tuple[list[MaskItem], list[torch.Tensor]]:
    """Masks for every object (prompt_index: the object's index, objects in order) and each
    object's best low-res logits; one decoder call per prompt shape."""
    start = time.perf_counter()
    coords_of: list[torch.Tensor] = []
    labels_of: list[torch.Tensor] = []
    try:
        for obj in objects:
            coords, labels = prompts_to_points(emb.original_size, obj.points, obj.labels, obj.box)
            if req.use_priors and emb.proposals is not None:
                coords, labels = with_prior_box(emb, coords, labels)
            coords_of.append(coords)
            labels_of.append(labels)
        groups: dict[tuple[int, bool], list[int]] = {}
        for i, coords in enumerate(coords_of):
            groups.setdefault((int(coords.shape[1]), mask_inputs[i] is not None), []).append(i)
        answers: dict[int, tuple[DecodeResult, int]] = {}
        for (_, has_mask), members in groups.items():
            masks_in = None
            if has_mask:
                masks_in = torch.stack([_reshaped(mask_inputs[i]) for i in members])
            res = decode_points(
                backend,
                emb,
                torch.cat([coords_of[i] for i in members]),
                torch.cat([labels_of[i] for i in members]),
                masks_in,
                req.num_masks,
            )
            for row, i in enumerate(members):
                answers[i] = (res, row)
    except UnsupportedPrompt as exc:
        raise UnsupportedPromptError(str(exc)) from exc
    except BackendError as exc:
        log.exception("decoder failed")
        raise BackendFailure("the decoder failed; see the server log") from exc
    metrics.decoder_latency.observe(time.perf_counter() - start)
    options = codecs.PolygonOptions(req.polygon_tolerance, req.min_area, req.largest_only)
    items: list[MaskItem] = []
    best: list[torch.Tensor] = []
    for i in range(len(objects)):
        res, row = answers[i]
        scores = res.iou_predictions[row].tolist()
        stability = res.stability_scores[row].tolist()
        for c in range(len(scores)):
            mask = res.masks((row, c)).numpy()
            items.append(
                MaskItem(
                    prompt_index=i,
                    mask_index=c,
                    score=finite(scores[c]),
                    stability_score=finite(stability[c]),
                    **codecs.encode_mask(mask, req.output, options),
                )
            )
        best.append(res.low_res_logits[row, int(res.iou_predictions[row].argmax())].clone())
    return items, best


def _reshaped(mask_input: torch.Tensor | None) -> torch.Tensor:
    assert mask_input is not None  # grouped by having one
    return mask_input.reshape(256, 256)
