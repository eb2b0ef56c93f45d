"""Golden masks of reference case A (tests/reference) through embed -> segment over HTTP, with the
real model; and the same answers from a second service instance that only shares Redis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from engine.core import decode, encode_images
from engine.loader import load_model
from service.cache import serialize_mask
from tests.integration.conftest import RunningService, png_bytes

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def golden(reference_dir: Path) -> dict[str, np.ndarray]:
    with np.load(reference_dir / "case_a" / "golden.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def backend(reference_dir: Path):  # type: ignore[no-untyped-def]
    return load_model(reference_dir / "case_a" / "weights.safetensors")


def _masks(answer: dict) -> np.ndarray:
    return np.stack(
        [
            mask_utils.decode({"size": m["rle"]["size"], "counts": m["rle"]["counts"].encode()})
            for m in answer["masks"]
        ]
    ).astype(bool)


CALLS = {
    "p1": lambda g: {
        "points": g["p1_point_coords"].tolist(),
        "labels": g["p1_point_labels"].tolist(),
    },
    "p2": lambda g: {
        "points": g["p2_point_coords"].tolist(),
        "labels": g["p2_point_labels"].tolist(),
    },
    "p3": lambda g: {"box": g["p3_box"].tolist()},
    "p4": lambda g: {
        "box": g["p4_box"].tolist(),
        "points": g["p4_point_coords"].tolist(),
        "labels": g["p4_point_labels"].tolist(),
    },
    "p5": lambda g: {
        "points": g["p5_point_coords"].tolist(),
        "labels": g["p5_point_labels"].tolist(),
        "num_masks": 3,
    },
    "p5b": lambda g: {
        "points": g["p5b_point_coords"].tolist(),
        "labels": g["p5b_point_labels"].tolist(),
        "num_masks": 4,
    },
    "p7": lambda g: {"boxes": g["p7_boxes"].tolist()},
}


def _reference_logits(backend, golden, prompt: dict, embedding) -> np.ndarray:  # type: ignore[no-untyped-def]
    boxes = prompt.get("boxes") or ([prompt["box"]] if "box" in prompt else None)
    res = decode(
        backend,
        embedding,
        point_coords=np.array(prompt["points"]) if "points" in prompt else None,
        point_labels=np.array(prompt["labels"]) if "labels" in prompt else None,
        boxes=np.array(boxes) if boxes is not None else None,
        num_multimask_outputs=prompt.get("num_masks", 1),
    )
    return res.logits().reshape(-1, *embedding.original_size).numpy()


def _check(
    name: str, answer: dict, golden, logits: np.ndarray, tol: float, max_pixels: int
) -> None:  # type: ignore[no-untyped-def]
    got = _masks(answer)
    want = golden[f"{name}_masks"].reshape(got.shape)
    diff = got != want
    assert diff.sum() <= max_pixels, f"{name}: {diff.sum()} pixels differ"
    if diff.any():
        assert np.abs(logits.reshape(got.shape)[diff]).max() < tol, name
    scores = np.array([m["score"] for m in answer["masks"]])
    iou_key = f"{name}_iou_head" if f"{name}_iou_head" in golden else f"{name}_iou"
    np.testing.assert_allclose(scores, golden[iou_key].reshape(-1), atol=1e-3)
    areas = [m["area"] for m in answer["masks"]]
    assert areas == [int(m.sum()) for m in got]


def _segment_every_call(  # type: ignore[no-untyped-def]
    client, backend, golden, image_id: str, embedding, tol: float, max_pixels: int
) -> dict[str, dict]:
    """POST every case A prompt for `image_id`; each answer checked against the golden masks
    (pixels that differ must have reference logits within `tol` of 0). Returns the answers."""
    answers = {}
    for name, make in CALLS.items():
        prompt = make(golden)
        r = client.post("/v1/segment", json={"image_id": image_id, **prompt})
        assert r.status_code == 200, r.text
        answers[name] = r.json()
        logits = _reference_logits(backend, golden, prompt, embedding)
        _check(name, answers[name], golden, logits, tol=tol, max_pixels=max_pixels)
    return answers


def test_golden_masks_through_the_service(
    start_service, backend, golden, redis_url: str, redis_prefix: str
) -> None:
    # float16 (an opt-in for an fp32 encoder) rounds the embedding: both replicas must still
    # answer alike, each from the same numbers
    first: RunningService = start_service(
        backend=backend, redis_url=redis_url, redis_key_prefix=redis_prefix, cache_dtype="float16"
    )
    r = first.client.post("/v1/embed", content=png_bytes(golden["image"]), headers=PNG)
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]
    assert (r.json()["width"], r.json()["height"]) == (512, 512)
    embedding = encode_images(backend, [golden["image"]])[0]
    np.testing.assert_allclose(embedding.embedding.numpy(), golden["image_embedding"], atol=1e-3)

    # Only pixels whose reference logit is within 1e-3 of 0 may differ.
    answers = _segment_every_call(first.client, backend, golden, image_id, embedding, 1e-3, 60)

    # A second instance shares only Redis: it decodes from the copy there, the same numbers
    # as the first instance's LRU, so it answers exactly the same.
    second: RunningService = start_service(
        backend=backend, redis_url=redis_url, redis_key_prefix=redis_prefix, cache_dtype="float16"
    )
    hit = second.client.post("/v1/embed", content=png_bytes(golden["image"]), headers=PNG).json()
    assert hit["cached"] is True and hit["image_id"] == image_id
    encodes = second.service.metrics.encoder_latency._sum.get()
    again = _segment_every_call(second.client, backend, golden, image_id, embedding, 1e-3, 60)
    for name in CALLS:
        assert [m["rle"] for m in again[name]["masks"]] == [
            m["rle"] for m in answers[name]["masks"]
        ], name
        assert [m["score"] for m in again[name]["masks"]] == [
            m["score"] for m in answers[name]["masks"]
        ], name
    assert second.service.metrics.encoder_latency._sum.get() == encodes  # no encoder run
    hits = second.service.metrics.cache_hits.labels("redis", "embedding")._value.get()
    assert hits == 1

    # Refinement from a mask stored by the first replica, decoded on the second.
    mask_id = answers["p2"]["mask_input_id"]
    prompt = CALLS["p1"](golden)
    refined = second.client.post(
        "/v1/segment", json={"image_id": image_id, **prompt, "mask_input_id": mask_id}
    )
    assert refined.status_code == 200, refined.text
    best = int(np.argmax([m["score"] for m in answers["p2"]["masks"]]))
    exact = torch.from_numpy(_reference_low_res(backend, embedding, CALLS["p2"](golden))[best])
    # what the cache keeps of a mask: quantised (service.cache.serialize_mask)
    _, stored = serialize_mask(exact[None], {})

    def refine(mask_input: torch.Tensor) -> np.ndarray:
        res = decode(
            backend,
            embedding,
            point_coords=np.array(prompt["points"]),
            point_labels=np.array(prompt["labels"]),
            mask_input=mask_input.reshape(1, 256, 256).numpy(),
        )
        return res.masks()[0, 0].numpy()

    got = _masks(refined.json())[0]
    assert (got != refine(stored)).sum() <= 60
    # The stated tolerance against refining from the exact logits: case A's random-weight
    # logits are noise-like, the worst case (docs/reliability.md), 244 pixels measured.
    assert (got != refine(exact)).sum() <= 0.002 * got.size
    assert (got != _masks(answers["p1"])[0]).sum() > 0  # the mask input changed the answer


def test_the_default_cache_answers_the_encoder_exactly(
    start_service, backend, golden, redis_url: str, redis_prefix: str
) -> None:
    """EDGESAM_CACHE_DTYPE=auto keeps an fp32 encoder's embeddings in float32."""
    rs: RunningService = start_service(
        backend=backend, redis_url=redis_url, redis_key_prefix=redis_prefix + "f32:"
    )
    assert rs.service.cache.dtype == "float32"
    r = rs.client.post("/v1/embed", content=png_bytes(golden["image"]), headers=PNG)
    assert r.status_code == 200, r.text
    embedding = encode_images(backend, [golden["image"]])[0]
    image_id = r.json()["image_id"]
    answers = _segment_every_call(rs.client, backend, golden, image_id, embedding, 1e-4, 10)
    upscaled = golden["p1logits_upscaled_logits"]
    diff = _masks(answers["p1"])[0] != golden["p1_masks"][0]
    assert np.all(np.abs(upscaled[0][diff]) < 1e-4)


def _reference_low_res(backend, embedding, prompt: dict) -> np.ndarray:  # type: ignore[no-untyped-def]
    res = decode(
        backend,
        embedding,
        point_coords=np.array(prompt["points"]),
        point_labels=np.array(prompt["labels"]),
        num_multimask_outputs=prompt.get("num_masks", 1),
    )
    return res.low_res_logits[0].numpy()


def test_golden_masks_through_the_service_on_onnxruntime(
    start_service, golden, reference_dir: Path, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """The CPU's `auto` choice: ONNX Runtime encodes (from uint8 pixels) and decodes (its
    split decoder for clicks, the whole decoder with a mask input); answers match case A."""
    ort = load_model(
        reference_dir / "case_a" / "weights.safetensors", backend="auto", cache_dir=tmp_path
    )
    assert ort.info.name == "onnxruntime" and ort.info.details["split_decoder"] == "true"
    rs: RunningService = start_service(
        backend=ort, redis_url=redis_url, redis_key_prefix=redis_prefix + "ort:"
    )
    r = rs.client.post("/v1/embed", content=png_bytes(golden["image"]), headers=PNG)
    assert r.status_code == 200, r.text
    image_id = r.json()["image_id"]
    embedding = encode_images(ort, [golden["image"]])[0]
    np.testing.assert_allclose(embedding.embedding.numpy(), golden["image_embedding"], atol=1e-4)
    answers = _segment_every_call(rs.client, ort, golden, image_id, embedding, 1e-3, 60)
    refined = rs.client.post(
        "/v1/segment",
        json={
            "image_id": image_id,
            **CALLS["p1"](golden),
            "mask_input_id": answers["p2"]["mask_input_id"],
        },
    )
    assert refined.status_code == 200, refined.text
    assert (_masks(refined.json())[0] != _masks(answers["p1"])[0]).sum() > 0
