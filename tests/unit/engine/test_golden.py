"""Our model, core and predictor against the official implementation's outputs (case A)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import EdgeSamPredictor, decode, encode_images
from engine.backends.torch_backend import TorchBackend
from engine.modeling import merge_prompts
from engine.transforms import apply_boxes, apply_coords, preprocess_image, resize_longest_side

ABS_TOL = 1e-4  # the reference README's suggested float32 tolerance
CALLS = ["p1", "p2", "p3", "p4", "p5", "p5b", "p6"]
NUM_OUTPUTS = {"p1": 1, "p2": 1, "p3": 1, "p4": 1, "p5": 3, "p5b": 4, "p6": 1}
STABILITY = {"p5b"}


def max_abs(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def assert_masks_match(ours: np.ndarray, ref: np.ndarray, logits: np.ndarray | None = None):
    """Boolean masks equal but for a handful of pixels whose logit is within 1e-4 of 0."""
    flipped = ours != ref
    assert flipped.sum() <= 5, f"{flipped.sum()} mask pixels differ"
    if logits is not None and flipped.any():
        assert np.abs(logits[flipped]).max() < 1e-3


def call_kwargs(g, name):
    kw = {}
    if f"{name}_point_coords" in g:
        kw["point_coords"] = g[f"{name}_point_coords"]
        kw["point_labels"] = g[f"{name}_point_labels"]
    if f"{name}_box" in g:
        kw["box"] = g[f"{name}_box"]
    if name == "p6":
        kw["mask_input"] = g["p6_mask_input"]
    return kw


def test_preprocessing_matches(golden):
    assert np.array_equal(resize_longest_side(golden["image"]), golden["resized_image"])
    x, input_size = preprocess_image(golden["image"])
    assert input_size == (1024, 1024)
    assert max_abs(x.numpy(), golden["input_tensor"]) == 0.0


def test_preprocessing_pads_bottom_right():
    image = np.full((300, 600, 3), 255, np.uint8)
    x, input_size = preprocess_image(image)
    assert input_size == (512, 1024)
    assert torch.all(x[0, :, 512:, :] == 0)
    assert torch.all(x[0, :, :512, :] > 0)


@pytest.mark.parametrize("shape", [(1, 3000), (3000, 1), (2, 100_000)])
def test_preprocessing_keeps_a_thin_strip_one_pixel_thick(shape):
    """The official rounding makes the short side 0 beyond 1:2048 (PIL refuses to resize to
    it); it stays 1 pixel, and coordinates map into that frame."""
    h, w = shape
    x, input_size = preprocess_image(np.full((h, w, 3), 200, np.uint8))
    assert input_size == ((1, 1024) if w > h else (1024, 1))
    assert torch.all(x[0, :, : input_size[0], : input_size[1]] > 0)
    corner = apply_coords(np.array([[w, h]], np.float64), (h, w))[0]
    np.testing.assert_allclose(corner, [input_size[1], input_size[0]])


def test_pixels_normalised_anywhere_equal_the_preprocessing():
    from engine.transforms import image_to_pixels, normalize_pixels

    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((300, 517, 3), (90, 40, 3))]
    converted = [image_to_pixels(im) for im in images]
    pixels, sizes = [p for p, _ in converted], [s for _, s in converted]
    assert sizes == [(594, 1024), (1024, 455)]
    assert all(p.dtype == torch.uint8 and p.shape == (1, 3, 1024, 1024) for p in pixels)
    batch = normalize_pixels(torch.cat(pixels), sizes)
    for i, im in enumerate(images):
        x, _ = preprocess_image(im)
        assert torch.equal(batch[i : i + 1], x)  # bit-identical, padding exactly 0
    with pytest.raises(ValueError, match="uint8"):
        normalize_pixels(batch, sizes)


def test_backend_encode_pixels_equals_encode(case_a_model, golden):
    from engine.backends.torch_backend import TorchBackend
    from engine.transforms import image_to_pixels

    backend = TorchBackend(case_a_model)
    pixels, size = image_to_pixels(golden["image"])
    x, _ = preprocess_image(golden["image"])
    assert torch.equal(backend.encode_pixels(pixels, [size]), backend.encode(x))


def test_embedding_matches(case_a_predictor, golden):
    assert max_abs(case_a_predictor.get_image_embedding(), golden["image_embedding"]) < ABS_TOL


def test_unfused_encoder_stages_match(case_a_model, golden):
    with torch.inference_mode():
        stages = case_a_model.image_encoder.forward_stages(torch.from_numpy(golden["input_tensor"]))
    for name in ["stem", "stage0", "stage1", "stage2", "stage3"]:
        ref = golden[f"enc_{name}"].astype(np.float32)
        ours = stages[name][:, : ref.shape[1]].numpy()
        # stored as float16: compare relative to the map's scale
        assert max_abs(ours, ref) < 1e-3 * np.abs(ref).max() + 1e-3, name


def test_dense_pe_matches(case_a_model, golden):
    pe = case_a_model.prompt_encoder.get_dense_pe().detach().numpy()
    assert max_abs(pe, golden["dense_pe"].astype(np.float32)) < 1e-3


@pytest.mark.parametrize("name", CALLS)
def test_prompt_transform_and_sparse_embeddings(case_a_model, golden, name):
    size = golden["image"].shape[:2]
    points = None
    if f"{name}_point_coords" in golden:
        coords = apply_coords(golden[f"{name}_point_coords"], size).astype(np.float32)
        assert max_abs(coords, golden[f"{name}_coords_1024"]) == 0.0
        points = (
            torch.from_numpy(coords)[None],
            torch.from_numpy(golden[f"{name}_point_labels"])[None],
        )
    boxes = None
    if f"{name}_box" in golden:
        box = apply_boxes(golden[f"{name}_box"], size).astype(np.float32)
        assert max_abs(box, golden[f"{name}_box_1024"]) == 0.0
        boxes = torch.from_numpy(box)
    coords, labels = merge_prompts(points, boxes)
    with torch.inference_mode():
        sparse = case_a_model.prompt_encoder.embed_labeled_points(coords, labels)
    assert max_abs(sparse, golden[f"{name}_sparse"]) < 1e-5
    if name == "p6":
        with torch.inference_mode():
            dense = case_a_model.prompt_encoder.embed_masks(
                torch.from_numpy(golden["p6_mask_input"])[None]
            )
        assert max_abs(dense, golden["p6_dense"].astype(np.float32)) < 1e-2
    else:
        dense_vec = case_a_model.prompt_encoder.no_mask_embed.weight[0].detach().numpy()
        assert max_abs(dense_vec, golden[f"{name}_dense_vec"]) == 0.0


@pytest.mark.parametrize("name", CALLS)
def test_predictor_matches_official(case_a_predictor, golden, name):
    masks, scores, low_res = case_a_predictor.predict(
        **call_kwargs(golden, name),
        num_multimask_outputs=NUM_OUTPUTS[name],
        use_stability_score=name in STABILITY,
    )
    assert low_res.shape == golden[f"{name}_low_res_logits"].shape
    assert max_abs(low_res, golden[f"{name}_low_res_logits"]) < ABS_TOL
    assert max_abs(scores, golden[f"{name}_iou"]) < ABS_TOL
    assert masks.shape == golden[f"{name}_masks"].shape and masks.dtype == bool
    assert_masks_match(masks, golden[f"{name}_masks"])
    assert np.abs(masks.sum((1, 2)) - golden[f"{name}_mask_pixels"]).max() <= 5


def test_predictor_raw_iou_head(case_a_predictor, golden):
    _, scores, _ = case_a_predictor.predict(
        **call_kwargs(golden, "p5b"), num_multimask_outputs=4, use_stability_score=False
    )
    assert max_abs(scores, golden["p5b_iou_head"]) < ABS_TOL


def test_predictor_return_logits(case_a_predictor, golden):
    logits, _, _ = case_a_predictor.predict(
        **call_kwargs(golden, "p1"), num_multimask_outputs=1, return_logits=True
    )
    assert max_abs(logits, golden["p1logits_upscaled_logits"]) < ABS_TOL
    assert_masks_match(logits > 0, golden["p1logits_masks"], golden["p1logits_upscaled_logits"])


def test_sam_style_multimask_flag(case_a_predictor, golden):
    """SAM's `multimask_output=True` is EdgeSAM's 3 outputs (tokens 1..3)."""
    _, scores, low_res = case_a_predictor.predict(
        **call_kwargs(golden, "p5"), multimask_output=True
    )
    assert max_abs(low_res, golden["p5_low_res_logits"]) < ABS_TOL
    _, single, _ = case_a_predictor.predict(**call_kwargs(golden, "p1"), multimask_output=False)
    assert single.shape == (1,)


def test_predict_torch_batch_of_boxes(case_a_predictor, golden):
    boxes = case_a_predictor.transform.apply_boxes_torch(
        torch.from_numpy(golden["p7_boxes"]), case_a_predictor.original_size
    )
    assert max_abs(boxes, golden["p7_boxes_1024"]) == 0.0
    masks, scores, low_res = case_a_predictor.predict_torch(
        None, None, boxes=boxes, num_multimask_outputs=1
    )
    assert max_abs(low_res, golden["p7_low_res_logits"]) < ABS_TOL
    assert max_abs(scores, golden["p7_iou"]) < ABS_TOL  # stability by default in predict_torch
    assert_masks_match(masks.numpy(), golden["p7_masks"])
    _, raw, _ = case_a_predictor.predict_torch(
        None, None, boxes=boxes, num_multimask_outputs=1, use_stability_score=False
    )
    assert max_abs(raw, golden["p7nostab_iou"]) < ABS_TOL


def test_edgesam_positional_features(case_a_predictor, golden):
    """EdgeSAM's predict(features, ...) call style."""
    feats = case_a_predictor.get_image_embedding()
    _, scores, _ = case_a_predictor.predict(
        feats, golden["p1_point_coords"], golden["p1_point_labels"], None, None, 1
    )
    assert max_abs(scores, golden["p1_iou"]) < ABS_TOL


def test_stateless_core_matches(case_a_model, golden):
    """The service's path: encode_images then decode, with boxes as one batch."""
    backend = TorchBackend(case_a_model)
    emb = encode_images(backend, [golden["image"]])[0]
    assert emb.original_size == (512, 512) and emb.input_size == (1024, 1024)
    assert max_abs(emb.embedding, golden["image_embedding"]) < ABS_TOL
    res = decode(backend, emb, boxes=golden["p7_boxes"], num_multimask_outputs=1)
    assert max_abs(res.low_res_logits, golden["p7_low_res_logits"]) < ABS_TOL
    assert max_abs(res.stability_scores, golden["p7_iou"]) < ABS_TOL
    assert max_abs(res.iou_predictions, golden["p7nostab_iou"]) < ABS_TOL
    assert_masks_match(res.masks().numpy(), golden["p7_masks"])
    one = decode(
        backend,
        emb,
        point_coords=golden["p4_point_coords"],
        point_labels=golden["p4_point_labels"],
        boxes=golden["p4_box"],
    )
    assert max_abs(one.low_res_logits, golden["p4_low_res_logits"]) < ABS_TOL
    assert_masks_match(one.masks((0, 0)).numpy(), golden["p4_masks"][0])


def test_unoptimised_backend_matches(case_a_model, golden):
    backend = TorchBackend(case_a_model, optimize=False)
    emb = backend.encode(torch.from_numpy(golden["input_tensor"]))
    assert max_abs(emb, golden["image_embedding"]) < ABS_TOL


def test_predictor_requires_image(case_a_model):
    predictor = EdgeSamPredictor(case_a_model)
    with pytest.raises(RuntimeError, match="set_image"):
        predictor.predict(point_coords=np.array([[1.0, 1.0]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError):
        predictor.get_image_embedding()


def test_bad_num_outputs(case_a_predictor, golden):
    with pytest.raises(ValueError, match="1, 3 or 4"):
        case_a_predictor.predict(**call_kwargs(golden, "p1"), num_multimask_outputs=2)


def test_bgr_input_equals_rgb(case_a_model, golden):
    predictor = EdgeSamPredictor(case_a_model)
    predictor.set_image(np.ascontiguousarray(golden["image"][..., ::-1]), image_format="BGR")
    assert max_abs(predictor.get_image_embedding(), golden["image_embedding"]) < ABS_TOL


@pytest.mark.parametrize("name", CALLS)
def test_stateless_core_matches_every_call(case_a_model, golden, name):
    """Each predictor call of case A through engine.core (the service's path)."""
    backend = TorchBackend(case_a_model)
    from engine.core import ImageEmbedding

    emb = ImageEmbedding(torch.from_numpy(golden["image_embedding"]), (512, 512), (1024, 1024))
    kw = call_kwargs(golden, name)
    res = decode(
        backend,
        emb,
        point_coords=kw.get("point_coords"),
        point_labels=kw.get("point_labels"),
        boxes=kw.get("box"),
        mask_input=kw.get("mask_input"),
        num_multimask_outputs=NUM_OUTPUTS[name],
    )
    assert max_abs(res.low_res_logits[0], golden[f"{name}_low_res_logits"]) < ABS_TOL
    scores = res.stability_scores if name in STABILITY else res.iou_predictions
    assert max_abs(scores[0], golden[f"{name}_iou"]) < ABS_TOL
    assert max_abs(res.iou_predictions[0], golden[f"{name}_iou_head"]) < ABS_TOL
    assert_masks_match(res.masks()[0].numpy(), golden[f"{name}_masks"])
