"""The automatic mask generator: the four official AMG runs of case A, and its building blocks
(NMS, RLE, crop boxes, small-region removal) on hand-made inputs.

Model runs are expensive on 2 cores, so the case A tests share one embedding and one decode of
the 8x8 grid through a memoising backend; the behaviour tests use a tiny fake backend that
"segments" an image by colour, so crops, NMS and small-region removal are exercised on scenes
whose right answer is known.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from engine import EdgeSamAutomaticMaskGenerator
from engine.amg_utils import (
    area_from_rle,
    batched_nms,
    build_point_grid,
    coco_encode_rle,
    generate_crop_boxes,
    mask_to_coco_rle,
    mask_to_rle,
    masks_to_boxes,
    nms,
    remove_small_regions,
    rle_to_mask,
    stability_scores,
)
from engine.backends.base import Backend, BackendInfo
from engine.backends.torch_backend import TorchBackend
from engine.compat import zip_strict
from engine.core import ImageEmbedding, encode_images

RUNS = ["amg", "amgall", "amgthr", "amgdef"]


# ---------------------------------------------------------------------------------------------
# Backends for the tests


class MemoBackend(Backend):
    """Wraps a backend and memoises encode/decode on their exact inputs, so that several
    generator runs on one image share one encoder and one decoder pass."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.info = inner.info
        self._memo: dict[tuple, tuple] = {}
        self.calls = {"encode": 0, "decode": 0}

    @staticmethod
    def _key(*tensors: torch.Tensor | None) -> tuple:
        return tuple(
            None if t is None else (tuple(t.shape), str(t.dtype), t.numpy().tobytes())
            for t in tensors
        )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        key = ("encode", *self._key(images))
        if key not in self._memo:
            self.calls["encode"] += 1
            self._memo[key] = (self.inner.encode(images),)
        return self._memo[key][0].clone()

    def decode(
        self,
        image_embeddings,
        point_coords,
        point_labels,
        mask_input=None,
        num_multimask_outputs=None,
    ):
        key = (
            "decode",
            num_multimask_outputs,
            *self._key(image_embeddings, point_coords, point_labels, mask_input),
        )
        if key not in self._memo:
            self.calls["decode"] += 1
            self._memo[key] = self.inner.decode(
                image_embeddings, point_coords, point_labels, mask_input, num_multimask_outputs
            )
        logits, iou = self._memo[key]
        return logits.clone(), iou.clone()


class ColourBackend(Backend):
    """A fake model: the "embedding" carries channel 0 of the preprocessed 1024x1024 input
    (1024 * 1024 == 256 * 64 * 64 values), and a point prompt segments the pixels whose value
    is within 0.05 of the value under the point (logits +4 / -4 at 256x256). Mask token 3 is
    the whole image, tokens 0-2 the colour region."""

    info = BackendInfo(name="fake", device="cpu", precision="fp32", fingerprint="colour")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, 0].reshape(images.shape[0], 256, 64, 64).clone()

    def decode(
        self,
        image_embeddings,
        point_coords,
        point_labels,
        mask_input=None,
        num_multimask_outputs=None,
    ):
        image = image_embeddings[0].reshape(1024, 1024)
        low = image[2::4, 2::4]  # 256x256
        xy = point_coords[:, 0].long().clamp(0, 1023)
        values = image[xy[:, 1], xy[:, 0]]
        region = torch.where((low[None] - values[:, None, None]).abs() < 0.05, 4.0, -4.0)
        whole = torch.full_like(region, 4.0)
        logits = torch.stack([region, region, region, whole], dim=1)
        iou = torch.full((point_coords.shape[0], 4), 0.9)
        return self.select_outputs(logits, iou, num_multimask_outputs)


# ---------------------------------------------------------------------------------------------
# Case A: the official generator's outputs


@pytest.fixture(scope="module")
def case_a(case_a_model, golden, reference_dir) -> tuple[MemoBackend, ImageEmbedding, dict]:
    torch.set_num_threads(2)
    backend = MemoBackend(TorchBackend(case_a_model))
    embedding = encode_images(backend, [golden["image"]])[0]  # encoded once for the module
    return (
        backend,
        embedding,
        json.loads((reference_dir / "case_a" / "case.json").read_text())["amg"]["runs"],
    )


def assert_matches_reference(records: list[dict], golden: dict, tag: str, expected_count: int):
    assert len(records) == expected_count == golden[f"{tag}_area"].shape[0]
    if not records:
        return
    # Order and identity: the prompting point of every record, exactly.
    points = np.array([r["point_coords"] for r in records], np.float64)
    assert points.shape == (len(records), 1, 2)
    assert np.array_equal(points[:, 0], golden[f"{tag}_point_coords"])
    assert np.array_equal(np.array([r["bbox"] for r in records]), golden[f"{tag}_bbox_xywh"])
    pred_iou = np.array([r["predicted_iou"] for r in records])
    stability = np.array([r["stability_score"] for r in records])
    assert np.abs(pred_iou - golden[f"{tag}_predicted_iou"]).max() < 1e-4
    assert np.abs(stability - golden[f"{tag}_stability_score"]).max() < 1e-4
    assert np.all(np.diff(pred_iou) <= 0), "records must come in decreasing predicted_iou"
    # Areas: exact but for 1-2 pixels in a few records (float rounding of logits near 0).
    area_diff = np.abs(np.array([r["area"] for r in records]) - golden[f"{tag}_area"])
    assert area_diff.max() <= 2
    assert (area_diff > 0).sum() <= max(2, len(records) // 6)
    for i, ref in enumerate(golden.get(f"{tag}_segmentations", [])):
        seg = records[i]["segmentation"]
        assert seg.dtype == bool and seg.shape == ref.shape
        assert (seg != ref).sum() <= 10
        assert records[i]["area"] == int(seg.sum())
    for r in records:
        assert r["crop_box"] == [0, 0, 512, 512]
        assert isinstance(r["area"], int) and isinstance(r["predicted_iou"], float)


@pytest.mark.parametrize("tag", RUNS)
def test_reproduces_official_amg_runs(case_a, golden, tag):
    backend, embedding, runs = case_a
    generator = EdgeSamAutomaticMaskGenerator(backend, **runs[tag]["kwargs"])
    records = generator.generate_from_embedding(embedding)
    assert_matches_reference(records, golden, tag, runs[tag]["count"])
    assert backend.calls == {"encode": 1, "decode": 1}  # all four runs share one decode


@pytest.fixture(scope="module")
def case_a_onnxruntime(
    golden, reference_dir, tmp_path_factory
) -> tuple[MemoBackend, ImageEmbedding]:
    """The CPU's `auto` backend: our ONNX export in ONNX Runtime, whose split decoder
    upscales only the three multimask tokens everything mode asks for."""
    from engine.loader import load_model

    ort = load_model(
        reference_dir / "case_a" / "weights.safetensors",
        backend="onnxruntime",
        cache_dir=tmp_path_factory.mktemp("onnx"),
        intra_op_num_threads=2,
    )
    assert ort.info.details["split_decoder"] == "true"
    backend = MemoBackend(ort)
    return backend, encode_images(backend, [golden["image"]])[0]


@pytest.mark.parametrize("tag", RUNS)
def test_reproduces_official_amg_runs_on_onnxruntime(case_a_onnxruntime, case_a, golden, tag):
    backend, embedding = case_a_onnxruntime
    runs = case_a[2]
    generator = EdgeSamAutomaticMaskGenerator(backend, **runs[tag]["kwargs"])
    records = generator.generate_from_embedding(embedding)
    assert_matches_reference(records, golden, tag, runs[tag]["count"])


def test_generate_image_equals_generate_from_embedding(case_a, golden):
    backend, embedding, runs = case_a
    generator = EdgeSamAutomaticMaskGenerator(
        backend, output_mode="uncompressed_rle", **runs["amgthr"]["kwargs"]
    )
    from_image = generator.generate(golden["image"])  # encodes (memoised) then decodes
    from_embedding = generator.generate_from_embedding(embedding)
    assert len(from_image) == runs["amgthr"]["count"]
    assert from_image == from_embedding
    assert_matches_reference(
        [dict(r, segmentation=rle_to_mask(r["segmentation"])) for r in from_image],
        golden,
        "amgthr",
        runs["amgthr"]["count"],
    )


def test_coco_rle_output(case_a, golden):
    backend, embedding, runs = case_a
    generator = EdgeSamAutomaticMaskGenerator(
        backend, output_mode="coco_rle", **runs["amg"]["kwargs"]
    )
    records = generator.generate_from_embedding(embedding)
    assert len(records) == 1
    rle = records[0]["segmentation"]
    assert rle["size"] == [512, 512] and isinstance(rle["counts"], str)
    decoded = mask_utils.decode(rle).astype(bool)
    assert (decoded != golden["amg_segmentations"][0]).sum() <= 10
    assert records[0]["area"] == int(mask_utils.area(rle)) == int(decoded.sum())
    assert abs(records[0]["area"] - int(golden["amg_area"][0])) <= 2


def test_crop_layers_smoke_run(case_a_model, golden):
    """crop_n_layers=1 with the real model on a small image: 1 + 4 crops are encoded."""
    torch.set_num_threads(2)
    image = np.ascontiguousarray(golden["image"][100:196, 150:278])  # 96x128
    backend = MemoBackend(TorchBackend(case_a_model))
    generator = EdgeSamAutomaticMaskGenerator(
        backend,
        points_per_side=2,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        box_nms_thresh=1.0,
        crop_n_layers=1,
        crop_nms_thresh=1.0,
    )
    records = generator.generate(image)
    assert backend.calls["encode"] == 5
    crop_boxes, _ = generate_crop_boxes((96, 128), 1, 512 / 1500)
    crops_xywh = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in crop_boxes]
    assert records
    for r in records:
        assert r["crop_box"] in crops_xywh
        assert r["segmentation"].shape == (96, 128)
        x, y, w, h = r["crop_box"]
        px, py = r["point_coords"][0]
        assert x <= px <= x + w and y <= py <= y + h
        seg = r["segmentation"]
        outside = seg.copy()
        outside[y : y + h, x : x + w] = False
        assert not outside.any(), "a crop's mask must stay inside its crop"
        assert r["area"] == int(seg.sum())


def test_generate_from_embedding_refuses_crop_layers(case_a):
    backend, embedding, _ = case_a
    generator = EdgeSamAutomaticMaskGenerator(backend, points_per_side=2, crop_n_layers=1)
    with pytest.raises(ValueError, match="crop_n_layers"):
        generator.generate_from_embedding(embedding)


def test_constructor_validates_arguments():
    backend = ColourBackend()
    with pytest.raises(ValueError):
        EdgeSamAutomaticMaskGenerator(backend, points_per_side=None)
    with pytest.raises(ValueError):
        EdgeSamAutomaticMaskGenerator(backend, point_grids=[build_point_grid(2)])
    with pytest.raises(ValueError, match="output_mode"):
        EdgeSamAutomaticMaskGenerator(backend, output_mode="png")
    with pytest.raises(ValueError, match="point_grids"):
        EdgeSamAutomaticMaskGenerator(
            backend, points_per_side=None, point_grids=[build_point_grid(2)], crop_n_layers=1
        )


# ---------------------------------------------------------------------------------------------
# Behaviour on a synthetic scene (fake colour-segmenting model)


def scene() -> np.ndarray:
    """256x256 grey image (the fake model sees the red channel only) with a red and a blue
    rectangle; the red one has a 3x3 hole of another colour, and a 3x3 red island lies below
    it."""
    image = np.full((256, 256, 3), 128, np.uint8)
    image[40:120, 30:110] = (220, 20, 20)  # red square
    image[70:73, 60:63] = (60, 200, 20)  # hole in the red square
    image[150:230, 140:240] = (20, 20, 220)  # blue rectangle
    image[200:203, 40:43] = (220, 20, 20)  # small red island
    return image


def run_scene(**kwargs) -> list[dict]:
    defaults = dict(points_per_side=8, pred_iou_thresh=0.5, stability_score_thresh=0.5)
    generator = EdgeSamAutomaticMaskGenerator(ColourBackend(), **{**defaults, **kwargs})
    return generator.generate(scene())


def find(records: list[dict], box_xywh: list[int], tol: int = 2) -> list[dict]:
    return [r for r in records if np.abs(np.subtract(r["bbox"], box_xywh)).max() <= tol]


RED_BOX = [30, 40, 79, 79]
RED_AND_ISLAND_BOX = [30, 40, 79, 162]
BLUE_BOX = [140, 150, 99, 79]


def test_scene_finds_each_object_once():
    records = run_scene()
    red, blue = find(records, RED_AND_ISLAND_BOX), find(records, BLUE_BOX)
    assert len(red) == 1 and len(blue) == 1
    seg = red[0]["segmentation"]
    assert seg[80, 70] and seg[201, 41] and not seg[71, 61] and not seg[160, 150]
    assert abs(red[0]["area"] - 80 * 80) <= 4 * 80  # within a one-pixel ring
    # the whole-image token and the grey background both span the image: NMS keeps one
    assert len(records) == 3
    assert all(0.5 < r["stability_score"] <= 1.0 for r in records)
    assert [r["predicted_iou"] for r in records] == sorted(
        (r["predicted_iou"] for r in records), reverse=True
    )


def test_scene_small_region_removal_fills_hole_and_drops_island():
    cleaned = run_scene(min_mask_region_area=30)
    assert not find(cleaned, RED_AND_ISLAND_BOX)
    red = find(cleaned, RED_BOX)
    assert len(red) == 1
    seg = red[0]["segmentation"]
    assert seg[71, 61], "the 3x3 hole is filled"
    assert not seg[195:210, 35:50].any(), "the 3x3 island is removed"
    assert red[0]["area"] == int(seg.sum())
    assert len(cleaned) == 3
    rle = run_scene(min_mask_region_area=30, output_mode="uncompressed_rle")
    assert [r["bbox"] for r in rle] == [r["bbox"] for r in cleaned]
    assert all(
        np.array_equal(rle_to_mask(a["segmentation"]), b["segmentation"])
        for a, b in zip_strict(rle, cleaned)
    )


def test_scene_crop_layers_keep_each_object_once():
    records = run_scene(crop_n_layers=1, points_per_side=4)
    crop_boxes, _ = generate_crop_boxes((256, 256), 1, 512 / 1500)
    crops_xywh = [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in crop_boxes]
    assert all(r["crop_box"] in crops_xywh for r in records)
    # the red square alone is whole in the top-left crop; with its island only in the image
    red, blue = find(records, RED_BOX), find(records, BLUE_BOX)
    assert len(red) == 1 and len(blue) == 1
    assert red[0]["crop_box"] == [0, 0, 172, 172]
    assert len(find(records, RED_AND_ISLAND_BOX)) == 1
    # blue is whole in the full image and in the bottom-right crop: crop NMS prefers the crop
    assert blue[0]["crop_box"] == [85, 85, 171, 171]
    for r in records:  # nothing cut by a crop edge that is not an image edge survives
        x, y, w, h = r["crop_box"]
        bx, by, bw, bh = r["bbox"]
        for edge, value in ((x, bx), (y, by), (x + w, bx + bw), (y + h, by + bh)):
            if edge not in (0, 256):
                assert abs(edge - value) > 20


# ---------------------------------------------------------------------------------------------
# Building blocks


def reference_nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> list[int]:
    """Textbook greedy NMS in float64 (for boxes on an integer grid IoU is then exact)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # sorted() is stable
    keep: list[int] = []
    for i in order:
        ok = True
        for j in keep:
            xx1, yy1 = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xx2, yy2 = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(xx2 - xx1, 0) * max(yy2 - yy1, 0)
            a_i = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1])
            a_j = (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1])
            union = a_i + a_j - inter
            if union > 0 and inter / union > thresh:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def test_nms_matches_textbook_greedy_nms():
    rng = np.random.default_rng(0)
    for thresh in (0.0, 0.3, 0.7, 1.0):
        xy = rng.integers(0, 60, (300, 2))
        wh = rng.integers(1, 40, (300, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float64)
        scores = rng.integers(0, 20, 300).astype(np.float32)  # many ties
        keep = nms(torch.tensor(boxes, dtype=torch.float32), torch.tensor(scores), thresh)
        assert keep.dtype == torch.int64
        assert keep.tolist() == reference_nms(boxes, scores, thresh)


def test_nms_edge_cases():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5], [20, 20, 20, 30.0]])
    # ties keep input order; IoU exactly equal to the threshold does not suppress
    assert nms(boxes, torch.tensor([0.5, 0.5, 0.4, 0.1]), 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.4, 0.1]), 0.49).tolist() == [1, 3]
    # zero-area boxes (IoU 0/0) never suppress each other
    flat = torch.tensor([[5, 5, 5, 5], [5, 5, 5, 5.0]])
    assert nms(flat, torch.tensor([1.0, 0.5]), 0.0).tolist() == [0, 1]
    assert nms(torch.zeros((0, 4)), torch.zeros(0), 0.5).tolist() == []


def test_batched_nms_separates_categories():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert batched_nms(boxes, scores, torch.zeros(4, dtype=torch.int64), 0.5).tolist() == [0, 3]
    cats = torch.tensor([0, 0, 1, 0])
    assert batched_nms(boxes, scores, cats, 0.5).tolist() == [0, 2, 3]
    # above 1000 boxes torchvision switches to per-category NMS: same kept set and order
    rng = np.random.default_rng(1)
    xy = rng.integers(0, 500, (1200, 2))
    big = torch.tensor(np.concatenate([xy, xy + rng.integers(1, 80, (1200, 2))], 1)).float()
    big_scores = torch.tensor(rng.random(1200), dtype=torch.float32)
    big_cats = torch.tensor(rng.integers(0, 3, 1200))
    keep = batched_nms(big, big_scores, big_cats, 0.6)
    expected = torch.cat(
        [
            torch.where(big_cats == c)[0][nms(big[big_cats == c], big_scores[big_cats == c], 0.6)]
            for c in range(3)
        ]
    )
    assert sorted(keep.tolist()) == sorted(expected.tolist())
    assert torch.all(big_scores[keep][:-1] >= big_scores[keep][1:])


def test_rle_round_trip_and_pycocotools():
    rng = np.random.default_rng(2)
    masks = [rng.random((37, 53)) > 0.5, np.zeros((5, 7), bool), np.ones((5, 7), bool)]
    blob = np.zeros((40, 30), bool)
    blob[10:20, 5:25] = True
    masks.append(blob)
    for mask in masks:
        rle = mask_to_rle(mask)
        assert rle["size"] == list(mask.shape)
        assert sum(rle["counts"]) == mask.size
        assert (rle["counts"][0] == 0) == bool(mask[0, 0])  # counts start with zeros
        assert np.array_equal(rle_to_mask(rle), mask)
        assert area_from_rle(rle) == int(mask.sum())
        coco = mask_to_coco_rle(mask)
        assert coco == coco_encode_rle(rle)
        assert isinstance(coco["counts"], str)
        assert np.array_equal(mask_utils.decode(coco).astype(bool), mask)
        assert int(mask_utils.area(coco)) == int(mask.sum())
    # column-major order: one column of 10 ones starting at row 10, x = 5
    assert mask_to_rle(blob)["counts"][:3] == [5 * 40 + 10, 10, 30]


def test_masks_to_boxes_and_stability():
    masks = np.zeros((3, 20, 30), bool)
    masks[0, 2:5, 7:11] = True
    masks[1, 19, 0] = True
    boxes = masks_to_boxes(masks)
    assert boxes.tolist() == [[7, 2, 10, 4], [0, 19, 0, 19], [0, 0, 0, 0]]
    logits = np.full((2, 4, 4), -2.0, np.float32)
    logits[0, :2] = 2.0  # 8 pixels > 1
    logits[0, 2] = 0.5  # 4 more pixels > -1
    scores = stability_scores(logits, 0.0, 1.0)
    assert scores.dtype == np.float32
    assert scores[0] == np.float32(8 / 12)
    assert np.isnan(scores[1])  # empty union, as SAM's 0/0


def test_point_grid_and_crop_boxes():
    assert build_point_grid(2).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]
    boxes, layers = generate_crop_boxes((512, 512), 1, 512 / 1500)
    # overlap int(512 * 512 / 1500) = 174, crop side ceil((174 + 512) / 2) = 343
    assert boxes == [
        [0, 0, 512, 512],
        [0, 0, 343, 343],
        [0, 169, 343, 512],
        [169, 0, 512, 343],
        [169, 169, 512, 512],
    ]
    assert layers == [0, 1, 1, 1, 1]
    boxes, layers = generate_crop_boxes((300, 600), 2, 0.25)
    assert len(boxes) == 1 + 4 + 16 and layers.count(2) == 16
    assert all(0 <= x0 < x1 <= 600 and 0 <= y0 < y1 <= 300 for x0, y0, x1, y1 in boxes)
    # each layer's crops cover the image
    for layer in (1, 2):
        cover = np.zeros((300, 600), bool)
        for (x0, y0, x1, y1), li in zip_strict(boxes, layers):
            if li == layer:
                cover[y0:y1, x0:x1] = True
        assert cover.all()


def test_remove_small_regions():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True  # 100-pixel square
    mask[5:7, 5:7] = False  # 4-pixel hole
    mask[15:17, 15:17] = True  # 4-pixel island
    mask[12, 12] = True  # touches the square diagonally: 8-connected, part of it
    filled, changed = remove_small_regions(mask, 5, "holes")
    assert changed and filled[5:7, 5:7].all() and filled[15:17, 15:17].all()
    assert (filled != mask).sum() == 4
    cleaned, changed = remove_small_regions(filled, 5, "islands")
    assert changed and not cleaned[15:17, 15:17].any() and cleaned[12, 12]
    assert (cleaned != filled).sum() == 4
    same, changed = remove_small_regions(cleaned, 5, "islands")
    assert not changed and same is cleaned
    # every island small: the largest is kept
    tiny = np.zeros((10, 10), bool)
    tiny[0, 0] = True
    tiny[5:7, 5:7] = True
    kept, changed = remove_small_regions(tiny, 50, "islands")
    assert changed and kept[5:7, 5:7].all() and not kept[0, 0]
    with pytest.raises(ValueError):
        remove_small_regions(mask, 5, "both")
