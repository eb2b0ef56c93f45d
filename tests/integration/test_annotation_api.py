"""Request shapes annotation tools need, over real loopback HTTP and gRPC: polygons with holes
and their options, many objects in one request, several images in one embed."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from pycocotools import mask as mask_utils

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from service import codecs
from service.codecs import PolygonOptions
from tests.integration import grpc_util
from tests.integration.conftest import RunningService, png_bytes, test_image
from tests.integration.grpc_util import BothTransports

start_grpc_service = grpc_util.start_grpc_service  # the fixture

PNG = {"content-type": "image/png"}


@pytest.fixture
def both(start_grpc_service) -> BothTransports:  # type: ignore[no-untyped-def]
    return start_grpc_service(max_boxes=8, embed_max_files=4)


def decode_rle(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def embed(both: BothTransports | RunningService, image: np.ndarray) -> str:
    client = both.http if isinstance(both, BothTransports) else both.client
    res = client.post("/v1/embed", content=png_bytes(image), headers=PNG)
    assert res.status_code == 200, res.text
    return res.json()["image_id"]


# -- polygons ------------------------------------------------------------------------------
# The fake backend's mask: a disc around each foreground point minus a smaller disc around
# each background point; fg and bg on one spot make a ring (a part with a hole).
RING_AND_DOT = {
    "points": [[200, 150], [200, 150], [60, 60]],
    "labels": [1, 0, 1],
}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"polygon_tolerance": 2.5},
        {"min_area": 400},
        {"largest_only": True},
        {"polygon_tolerance": 1.0, "min_area": 900, "largest_only": True},
    ],
)
def test_polygons_with_holes_over_both_transports(both: BothTransports, options: dict) -> None:
    image_id = embed(both, test_image(300, 400))
    body = {"image_id": image_id, **RING_AND_DOT, "output": ["rle", "polygons"], **options}
    res = both.http.post("/v1/segment", json=body)
    assert res.status_code == 200, res.text
    item = res.json()["masks"][0]
    mask = decode_rle(item["rle"])
    expected = codecs.mask_to_polygon_parts(
        mask,
        PolygonOptions(
            options.get("polygon_tolerance", 0.0),
            options.get("min_area", 0),
            options.get("largest_only", False),
        ),
    )
    assert item["polygons"] == [e for e, _ in expected]
    assert item["holes"] == [h for _, h in expected]
    if not options:
        # the ring keeps its hole; the dot is a second part; polygons give the mask back
        assert len(item["polygons"]) == 2 and sorted(map(len, item["holes"])) == [0, 1]
        assert np.array_equal(codecs.polygon_parts_to_mask(expected, *mask.shape), mask)
    if options.get("largest_only"):
        assert len(item["polygons"]) == 1
    if options.get("min_area") == 400:
        # the ring (840 px) and the dot (1116 px) stay; the ring's 276-pixel hole is filled
        assert len(item["polygons"]) == 2 and item["holes"] == [[], []]
    if options.get("min_area") == 900:
        assert len(item["polygons"]) == 1 and item["holes"] == [[]]  # the dot

    request = pb.SegmentRequest(
        image_id=image_id,
        points=[pb.Point(x=x, y=y) for x, y in RING_AND_DOT["points"]],
        labels=RING_AND_DOT["labels"],
        outputs=[pb.OUTPUT_FORMAT_POLYGONS],
        **options,
    )
    got = both.stub.Segment(request, timeout=30).masks[0]
    assert [list(p.xy) for p in got.polygons] == item["polygons"]
    assert [[list(r.xy) for r in p.holes] for p in got.polygons] == item["holes"]


def test_polygon_options_are_validated(both: BothTransports) -> None:
    image_id = embed(both, test_image(60, 80))
    for bad in ({"polygon_tolerance": -1}, {"min_area": -5}, {"largest_only": "yes"}):
        res = both.http.post(
            "/v1/segment", json={"image_id": image_id, "box": [1, 1, 50, 40], **bad}
        )
        assert res.status_code == 422 and res.json()["code"] == "invalid_request", res.text
    with pytest.raises(grpc.RpcError) as info:
        both.stub.Segment(
            pb.SegmentRequest(image_id=image_id, box=pb.Box(x1=50, y1=40), min_area=-1),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_everything_polygons_take_the_options(both: BothTransports) -> None:
    image_id = embed(both, test_image(64, 64))
    body = {"image_id": image_id, "points_per_side": 2, "output": ["rle", "polygons"]}
    for extra in ({}, {"largest_only": True, "polygon_tolerance": 3.0}):
        res = both.http.post("/v1/everything", json={**body, **extra})
        if res.status_code == 501:
            pytest.skip("everything mode unavailable in this build")
        assert res.status_code == 200, res.text
        for m in res.json()["masks"]:
            parts = codecs.mask_to_polygon_parts(
                decode_rle(m["rle"]),
                PolygonOptions(extra.get("polygon_tolerance", 0.0), 0, bool(extra)),
            )
            assert m["polygons"] == [e for e, _ in parts]
            assert m["holes"] == [h for _, h in parts]


# -- many objects in one request -----------------------------------------------------------
def objects(w: int, h: int) -> list[dict]:
    return [
        {"points": [[w * 0.3, h * 0.4]], "labels": [1]},
        {"points": [[w * 0.7, h * 0.6]], "labels": [1]},  # same shape as the first
        {"box": [w * 0.1, h * 0.1, w * 0.5, h * 0.6]},
        {"points": [[w * 0.6, h * 0.3], [w * 0.8, h * 0.8]], "labels": [1, 0]},
        {
            "points": [[w * 0.5, h * 0.5]],
            "labels": [1],
            "box": [w * 0.2, h * 0.2, w * 0.9, h * 0.9],
        },
    ]


def test_prompts_match_one_request_per_object_on_the_real_model(
    start_service, reference_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    from engine.loader import load_model

    backend = load_model(reference_dir / "case_a" / "weights.safetensors")
    calls = []
    real_decode = backend.decode

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(args[1].shape[0])  # batch size
        return real_decode(*args, **kwargs)

    backend.decode = counting  # type: ignore[method-assign]
    rs = start_service(backend=backend, max_boxes=8)
    with np.load(reference_dir / "case_a" / "golden.npz") as z:
        image = z["image"]
    image_id = embed(rs, image)
    h, w = image.shape[:2]
    objs = objects(w, h)
    # one object refined from an earlier answer: each object carries its own mask input
    first = rs.client.post("/v1/segment", json={"image_id": image_id, **objs[3]}).json()
    objs[3] = {**objs[3], "mask_input_id": first["mask_input_id"]}

    singles = []
    for obj in objs:
        res = rs.client.post("/v1/segment", json={"image_id": image_id, "num_masks": 3, **obj})
        assert res.status_code == 200, res.text
        singles.append(res.json())
    calls.clear()
    res = rs.client.post(
        "/v1/segment", json={"image_id": image_id, "num_masks": 3, "prompts": objs}
    )
    assert res.status_code == 200, res.text
    many = res.json()
    # one batch per prompt shape: the two clicks (click + padding point) and the box (two
    # corners) are two tokens each; click + box, and the refined object, are batches of one
    assert sorted(calls) == [1, 1, 3]
    assert [m["prompt_index"] for m in many["masks"]] == [i for i in range(5) for _ in range(3)]
    assert len(many["mask_input_ids"]) == 5
    for i, single in enumerate(singles):
        batched = [m for m in many["masks"] if m["prompt_index"] == i]
        assert [m["mask_index"] for m in batched] == [0, 1, 2]
        for a, b in zip(batched, single["masks"]):
            ma, mb = decode_rle(a["rle"]), decode_rle(b["rle"])
            union = np.logical_or(ma, mb).sum()
            iou = np.logical_and(ma, mb).sum() / union if union else 1.0
            assert iou >= 0.999, (i, iou)
            assert a["score"] == pytest.approx(b["score"], abs=1e-4)


def test_prompts_over_grpc_equal_http(both: BothTransports) -> None:
    image_id = embed(both, test_image(120, 160))
    objs = objects(160, 120)
    http = both.http.post("/v1/segment", json={"image_id": image_id, "prompts": objs}).json()
    request = pb.SegmentRequest(image_id=image_id)
    for obj in objs:
        prompt = request.prompts.add()
        for x, y in obj.get("points", []):
            prompt.points.add(x=x, y=y)
        prompt.labels.extend(obj.get("labels", []))
        if "box" in obj:
            x0, y0, x1, y1 = obj["box"]
            prompt.box.CopyFrom(pb.Box(x0=x0, y0=y0, x1=x1, y1=y1))
    got = both.stub.Segment(request, timeout=30)
    assert [m.prompt_index for m in got.masks] == [m["prompt_index"] for m in http["masks"]]
    assert [m.rle.counts for m in got.masks] == [m["rle"]["counts"] for m in http["masks"]]
    assert len(got.mask_input_ids) == len(objs)
    # a refinement id of one object refines that object only
    refined = both.http.post(
        "/v1/segment",
        json={
            "image_id": image_id,
            "prompts": [objs[0], {**objs[1], "mask_input_id": http["mask_input_ids"][1]}],
        },
    )
    assert refined.status_code == 200, refined.text
    assert refined.json()["masks"][0]["rle"] == http["masks"][0]["rle"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompts": []}, "prompts is empty"),
        ({"prompts": [{"box": [1, 1, 5, 5]}], "box": [1, 1, 5, 5]}, "not both"),
        ({"prompts": [{"points": [[1, 1]]}]}, "prompts[0]"),
        ({"prompts": [{"box": [1, 1, 5, 5]}, {}]}, "prompts[1]"),
        ({"prompts": [{"box": [1, 1, 500, 5]}]}, "outside"),
        ({"prompts": [{"box": [1, 1, 5, 5]}] * 9}, "at most 8"),
        ({"prompts": [{"box": [1, 1, 5, 5], "mask_input_id": "0" * 32}]}, None),
    ],
)
def test_prompts_refusals(both: BothTransports, body: dict, needle: str | None) -> None:
    image_id = embed(both, test_image(60, 80))
    res = both.http.post("/v1/segment", json={"image_id": image_id, **body})
    if needle is None:
        assert res.status_code == 404 and res.json()["code"] == "mask_input_not_found"
        return
    assert res.status_code == 422, res.text
    assert res.json()["code"] == "invalid_prompt"
    assert needle in res.json()["message"]


# -- several images in one embed -----------------------------------------------------------
def test_multipart_embed_answers_one_result_per_part(both: BothTransports) -> None:
    a, b = png_bytes(test_image(40, 50, seed=1)), png_bytes(test_image(30, 20, seed=2))
    files = [
        ("file", ("a.png", a, "image/png")),
        ("file", ("bad.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")),
        ("file", ("b.png", b, "application/octet-stream")),
        ("file", ("c.txt", b"hello", "text/plain")),
    ]
    res = both.http.post("/v1/embed", files=files)
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    assert len(results) == 4
    assert results[0]["image_id"] == codecs.content_hash(a) and results[0]["width"] == 50
    assert results[1] == {"code": "invalid_image", "message": results[1]["message"]}
    assert results[2]["image_id"] == codecs.content_hash(b) and results[2]["height"] == 30
    assert results[3]["code"] == "unsupported_media_type"
    # embedded: the next time they are cache hits, and segment works on them
    again = both.http.post("/v1/embed", files=[files[0], files[2]]).json()["results"]
    assert [r["cached"] for r in again] == [True, True]
    # one part keeps the single answer
    single = both.http.post("/v1/embed", files=[files[0]]).json()
    assert single["image_id"] == codecs.content_hash(a) and "results" not in single
    # more parts than EDGESAM_EMBED_MAX_FILES
    res = both.http.post("/v1/embed", files=[files[0]] * 5)
    assert res.status_code == 422 and res.json()["code"] == "invalid_request"

    batch = both.stub.EmbedBatch(
        pb.EmbedBatchRequest(
            images=[
                pb.EmbedRequest(image=a),
                pb.EmbedRequest(image=b"junk"),
                pb.EmbedRequest(image=b, content_type="image/png"),
            ]
        ),
        timeout=30,
    )
    kinds = [item.WhichOneof("outcome") for item in batch.results]
    assert kinds == ["result", "error", "result"]
    assert batch.results[0].result.image_id == results[0]["image_id"]
    assert batch.results[0].result.cached
    assert batch.results[1].error.code == "unsupported_media_type"
    assert batch.results[2].result.image_id == results[2]["image_id"]
    with pytest.raises(grpc.RpcError) as info:
        both.stub.EmbedBatch(pb.EmbedBatchRequest(images=[pb.EmbedRequest(image=a)] * 5))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
