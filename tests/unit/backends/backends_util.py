"""Helpers shared by the backend tests."""

import numpy as np


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean masks (1.0 when both are empty)."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# (call, kwargs for engine.core.decode) for the case-A predictor calls with one prompt each.
CASE_A_CALLS = {
    "p1": {"points": True, "num_multimask_outputs": 1},
    "p2": {"points": True, "num_multimask_outputs": 1},
    "p3": {"box": True, "num_multimask_outputs": 1},
    "p4": {"points": True, "box": True, "num_multimask_outputs": 1},
    "p5": {"points": True, "num_multimask_outputs": 3},
    "p5b": {"points": True, "num_multimask_outputs": 4},
    "p6": {"points": True, "mask": True, "num_multimask_outputs": 1},
}


def decode_kwargs(golden: dict, call: str) -> dict:
    spec = CASE_A_CALLS[call]
    kw: dict = {"num_multimask_outputs": spec["num_multimask_outputs"]}
    if spec.get("points"):
        kw["point_coords"] = golden[f"{call}_point_coords"]
        kw["point_labels"] = golden[f"{call}_point_labels"]
    if spec.get("box"):
        kw["boxes"] = golden[f"{call}_box"][None]
    if spec.get("mask"):
        kw["mask_input"] = golden[f"{call}_mask_input"]
    return kw
