"""COCO compressed RLE in pure numpy (the format pycocotools writes), so the client needs no
pycocotools: `decode(rle)` -> bool HxW, `encode(mask)` -> {"size": [h, w], "counts": str}.

Counts alternate runs of 0s and 1s (starting with 0s) over the mask in column-major order.
Each count is written as 5-bit groups, least significant first, in characters offset by 48;
bit 0x20 marks "more groups follow" and bit 0x10 of the last group is the sign. From the
third count on, the value stored is the difference from the count two places before.
"""

from __future__ import annotations

import numpy as np


def decode_counts(counts: str | bytes) -> list[int]:
    """The run lengths of a compressed counts string."""
    data = counts.encode() if isinstance(counts, str) else counts
    out: list[int] = []
    p = 0
    n = len(data)
    while p < n:
        value = 0
        shift = 0
        more = True
        while more:
            if p >= n:
                raise ValueError("truncated RLE counts string")
            c = data[p] - 48
            if c < 0 or c > 63:
                raise ValueError(f"invalid character {chr(data[p])!r} in RLE counts")
            value |= (c & 0x1F) << shift
            more = bool(c & 0x20)
            p += 1
            shift += 5
            if not more and c & 0x10:
                value |= -1 << shift
        if len(out) > 2:
            value += out[-2]
        out.append(value)
    return out


def encode_counts(runs: list[int]) -> str:
    """The inverse of decode_counts."""
    chars = []
    for i, run in enumerate(runs):
        value = run - runs[i - 2] if i > 2 else run
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = not ((c & 0x10) == 0 and value == 0 or (c & 0x10) != 0 and value == -1)
            if more:
                c |= 0x20
            chars.append(chr(c + 48))
    return "".join(chars)


def decode(rle: dict) -> np.ndarray:
    """{"size": [h, w], "counts": str} -> bool mask HxW."""
    h, w = (int(v) for v in rle["size"])
    runs = decode_counts(rle["counts"])
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {h}x{w}")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape(w, h).T.copy()


def encode(mask: np.ndarray) -> dict:
    """bool HxW -> {"size": [h, w], "counts": str}."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    flat = mask.T.reshape(-1)
    if flat.size == 0:
        return {"size": [h, w], "counts": ""}
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs = [0, *runs]
    return {"size": [h, w], "counts": encode_counts([int(r) for r in runs])}
