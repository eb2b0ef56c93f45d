"""Polygons with holes, Douglas-Peucker tolerance, min_area and largest_only (service.codecs),
on masks built directly (the test weights are random)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from service import codecs
from service.codecs import PolygonOptions


def ring_mask(h: int = 120, w: int = 160) -> np.ndarray:
    """A 60x60 square with a 20x20 hole, a separate 10x10 square and a 2x2 speck."""
    mask = np.zeros((h, w), dtype=bool)
    mask[20:80, 20:80] = True
    mask[40:60, 40:60] = False  # the hole
    mask[20:30, 100:110] = True  # second part
    mask[100:102, 140:142] = True  # speck (4 px)
    return mask


def area_of(ring: list[float]) -> float:
    return float(cv2.contourArea(np.asarray(ring, np.float32).reshape(-1, 1, 2)))


def test_holes_kept_and_round_trip() -> None:
    mask = ring_mask()
    parts = codecs.mask_to_polygon_parts(mask)
    assert len(parts) == 3
    by_area = sorted(parts, key=lambda p: -area_of(p[0]))
    big, small, speck = by_area
    assert len(big[1]) == 1, "the square's hole must be kept"
    assert small[1] == [] and speck[1] == []
    hole = np.asarray(big[1][0]).reshape(-1, 2)
    # the hole ring runs along the mask pixels bordering the hole
    assert hole[:, 0].min() == 39 and hole[:, 0].max() == 60
    # rasterising exteriors minus holes gives the mask back exactly
    back = codecs.polygon_parts_to_mask(parts, *mask.shape)
    assert np.array_equal(back, mask)


def test_island_inside_hole_is_its_own_part() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 10:90] = True
    mask[30:70, 30:70] = False
    mask[45:55, 45:55] = True  # island in the hole
    parts = codecs.mask_to_polygon_parts(mask)
    assert len(parts) == 2
    assert sorted(len(h) for _, h in parts) == [0, 1]
    assert np.array_equal(codecs.polygon_parts_to_mask(parts, 100, 100), mask)


def test_encode_mask_gives_polygons_and_holes_in_step() -> None:
    out = codecs.encode_mask(ring_mask(), ["polygons"])
    assert len(out["polygons"]) == len(out["holes"]) == 3
    assert sorted(len(h) for h in out["holes"]) == [0, 0, 1]
    assert "rle" not in out


def test_min_area_drops_small_parts_and_fills_small_holes() -> None:
    mask = ring_mask()
    parts = codecs.mask_to_polygon_parts(mask, PolygonOptions(min_area=50))
    assert len(parts) == 2  # the 4-pixel speck is gone; the 100-pixel square stays
    assert sorted(len(h) for _, h in parts) == [0, 1]  # the 400-pixel hole stays
    parts = codecs.mask_to_polygon_parts(mask, PolygonOptions(min_area=500))
    assert len(parts) == 1  # only the big square (3200 px) is left ...
    assert parts[0][1] == []  # ... with its 400-pixel hole filled
    filled = codecs.polygon_parts_to_mask(parts, *mask.shape)
    assert filled[50, 50] and filled[20:80, 20:80].all() and filled.sum() == 3600


def test_hole_touching_nothing_but_border_background_is_not_filled() -> None:
    """A notch open to the outside is background, not a hole: min_area leaves it alone."""
    mask = np.zeros((60, 60), dtype=bool)
    mask[10:50, 10:50] = True
    mask[25:35, 10:30] = False  # notch open on the left
    parts = codecs.mask_to_polygon_parts(mask, PolygonOptions(min_area=1000))
    assert np.array_equal(codecs.polygon_parts_to_mask(parts, 60, 60), mask)


def test_largest_only() -> None:
    parts = codecs.mask_to_polygon_parts(ring_mask(), PolygonOptions(largest_only=True))
    assert len(parts) == 1
    assert len(parts[0][1]) == 1  # the largest part keeps its hole
    assert codecs.mask_to_polygon_parts(np.zeros((10, 10), bool), PolygonOptions(True)) == []


def test_tolerance_simplifies_within_the_tolerance() -> None:
    yy, xx = np.mgrid[:200, :200]
    disc = (xx - 100) ** 2 + (yy - 100) ** 2 <= 80**2
    exact = codecs.mask_to_polygons(disc)
    coarse = codecs.mask_to_polygons(disc, PolygonOptions(tolerance=2.0))
    assert len(coarse) == 1
    assert len(coarse[0]) < len(exact[0]) / 3
    # every simplified vertex lies on the traced outline; the outline stays within ~2 px
    pts = np.asarray(coarse[0], np.float32).reshape(-1, 1, 2)
    for x, y in np.asarray(exact[0]).reshape(-1, 2)[::7]:
        assert abs(cv2.pointPolygonTest(pts, (float(x), float(y)), True)) <= 2.0 + 1e-6
    # the area barely moves
    assert area_of(coarse[0]) == pytest.approx(area_of(exact[0]), rel=0.02)


def test_tolerance_applies_to_holes_too() -> None:
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(xx - 100, yy - 100)
    annulus = (r <= 90) & (r > 40)
    exact = codecs.mask_to_polygon_parts(annulus)
    coarse = codecs.mask_to_polygon_parts(annulus, PolygonOptions(tolerance=1.5))
    assert len(exact[0][1]) == len(coarse[0][1]) == 1
    assert len(coarse[0][1][0]) < len(exact[0][1][0]) / 2
    assert area_of(coarse[0][1][0]) == pytest.approx(area_of(exact[0][1][0]), rel=0.05)


def test_defaults_unchanged_for_holeless_masks() -> None:
    """Without options, exteriors are what RETR_EXTERNAL traced before (compatibility)."""
    mask = np.zeros((50, 50), dtype=bool)
    mask[5:20, 5:40] = True
    mask[30:45, 10:20] = True
    contours, _ = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE
    )
    before = sorted([float(v) for v in c.reshape(-1)] for c in contours)
    assert sorted(codecs.mask_to_polygons(mask)) == before
