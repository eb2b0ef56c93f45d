"""Prompt validation: a segment request's points, labels and boxes checked against the
image they refer to, in original-image pixels."""

from __future__ import annotations

import numpy as np

from service.errors import InvalidPrompt
from service.schemas import SegmentRequest


def validate_prompts(
    req: SegmentRequest, original_size: tuple[int, int], max_points: int, max_boxes: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """(points Nx2, labels N, boxes Bx4) in original pixels, or InvalidPrompt naming the
    problem. Coordinates must be finite and inside [0, width] x [0, height]."""
    h, w = original_size
    if req.box is not None and req.boxes is not None:
        raise InvalidPrompt("give either box or boxes, not both")
    if req.points is None and req.box is None and req.boxes is None:
        raise InvalidPrompt("give at least one prompt: points (with labels), box or boxes")
    points = labels = boxes = None
    if req.points is not None or req.labels is not None:
        if req.points is None or req.labels is None:
            raise InvalidPrompt("points and labels go together: one label per point")
        if len(req.points) != len(req.labels):
            raise InvalidPrompt(
                f"{len(req.points)} points but {len(req.labels)} labels: give one label per point"
            )
        if not req.points:
            raise InvalidPrompt("points is empty")
        if len(req.points) > max_points:
            raise InvalidPrompt(f"{len(req.points)} points; at most {max_points} are accepted")
        points = np.asarray(req.points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(req.labels, dtype=np.int64)
        _check_inside(points, w, h, "point")
    box_list = [req.box] if req.box is not None else req.boxes
    if box_list is not None:
        if not box_list:
            raise InvalidPrompt("boxes is empty")
        if len(box_list) > max_boxes:
            raise InvalidPrompt(f"{len(box_list)} boxes; at most {max_boxes} are accepted")
        boxes = np.asarray(box_list, dtype=np.float64).reshape(-1, 4)
        _check_inside(boxes.reshape(-1, 2), w, h, "box corner")
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            if x1 <= x0 or y1 <= y0:
                raise InvalidPrompt(
                    f"box {i} [{x0:g}, {y0:g}, {x1:g}, {y1:g}] is inverted or empty: "
                    "boxes are [x0, y0, x1, y1] with x0 < x1 and y0 < y1"
                )
    return points, labels, boxes


def _check_inside(xy: np.ndarray, w: int, h: int, what: str) -> None:
    if not np.isfinite(xy).all():
        raise InvalidPrompt(f"every {what} coordinate must be a finite number")
    outside = (xy[:, 0] < 0) | (xy[:, 0] > w) | (xy[:, 1] < 0) | (xy[:, 1] > h)
    if outside.any():
        x, y = xy[int(np.flatnonzero(outside)[0])].tolist()
        raise InvalidPrompt(
            f"{what} ({x:g}, {y:g}) lies outside the {w}x{h} image "
            "(coordinates are original-image pixels)"
        )
