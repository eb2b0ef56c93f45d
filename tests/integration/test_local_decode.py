"""Clicks without a round trip: the embedding (.npy) and the SAM-signature decoder downloaded
over real HTTP and run with ONNX Runtime give the masks /v1/segment gives for the same prompts;
the downloads' ETag/304/404/API-key behaviour, CORS, and gRPC GetEmbedding."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.integration import grpc_util
from tests.integration.conftest import RunningService, png_bytes, test_image

start_grpc_service = grpc_util.start_grpc_service  # the fixture

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def case_a(reference_dir: Path):  # type: ignore[no-untyped-def]
    """The reference weights in the PyTorch backend, and a non-square crop of the reference
    image (so the decoder's crop to the unpadded size matters)."""
    import torch

    from engine.loader import load_model

    torch.set_num_threads(2)
    with np.load(reference_dir / "case_a" / "golden.npz") as z:
        image = np.ascontiguousarray(z["image"][:384])
    return load_model(reference_dir / "case_a" / "weights.safetensors"), image


def _rle_mask(item: dict) -> np.ndarray:
    rle = {"size": item["rle"]["size"], "counts": item["rle"]["counts"].encode()}
    return mask_utils.decode(rle).astype(bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class LocalDecoder:
    """What a browser does: the prompts scaled into the 1024 frame, SAM's padding point when
    there is no box, orig_im_size as (height, width)."""

    def __init__(self, onnx_bytes: bytes, embedding: np.ndarray, width: int, height: int):
        import onnxruntime as ort

        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.embedding = embedding.astype(np.float32)
        self.size = np.array([height, width], dtype=np.float32)
        self.scale = 1024.0 / max(width, height)

    def run(
        self,
        points: list | None = None,
        labels: list | None = None,
        box: list | None = None,
        mask_input: np.ndarray | None = None,
        pad: bool = True,
    ) -> dict[str, np.ndarray]:
        coords, labs = list(points or []), list(labels or [])
        if box is not None:
            coords += [box[:2], box[2:]]
            labs += [2, 3]
        elif pad:  # SAM's signature; CVAT's plugin sends its clicks alone
            coords.append([0.0, 0.0])
            labs.append(-1)
        xy = np.array(coords, dtype=np.float32) * self.scale
        xy[np.array(labs) == -1] = 0.0
        feeds = {
            "image_embeddings": self.embedding,
            "point_coords": xy[None],
            "point_labels": np.array(labs, dtype=np.float32)[None],
            "mask_input": (
                np.zeros((1, 1, 256, 256), np.float32) if mask_input is None else mask_input
            ),
            "has_mask_input": np.array([0.0 if mask_input is None else 1.0], np.float32),
            "orig_im_size": self.size,
        }
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feeds)))


def test_local_decoder_answers_as_the_service(case_a, start_service, tmp_path: Path) -> None:
    backend, image = case_a
    rs: RunningService = start_service(backend=backend, engine_cache_dir=tmp_path / "engines")
    c = rs.client
    r = c.post("/v1/embed", content=png_bytes(image), headers=PNG)
    assert r.status_code == 200, r.text
    image_id, width, height = r.json()["image_id"], r.json()["width"], r.json()["height"]
    assert (width, height) == (512, 384)

    # the embedding: the cache's float32, exactly what the server decodes from
    got = c.get(f"/v1/embeddings/{image_id}")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/x-npy"
    embedding = np.load(io.BytesIO(got.content), allow_pickle=False)
    assert embedding.shape == (1, 256, 64, 64) and embedding.dtype == np.float32
    assert (got.headers["x-edgesam-width"], got.headers["x-edgesam-height"]) == ("512", "384")
    from engine.core import encode_images

    np.testing.assert_array_equal(embedding, encode_images(backend, [image])[0].embedding.numpy())

    # the decoder: segment-anything's signature, exported once into the cache folder
    dec = c.get("/v1/models/decoder.onnx")
    assert dec.status_code == 200, dec.text
    assert dec.headers["etag"] and dec.headers["content-type"] == "application/octet-stream"
    assert list((tmp_path / "engines").glob("sam-decoder-*-sam-*.onnx"))
    again = c.get("/v1/models/decoder.onnx", headers={"if-none-match": dec.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    local = LocalDecoder(dec.content, embedding, width, height)
    inputs = {i.name: (i.type, i.shape) for i in local.session.get_inputs()}
    assert list(inputs) == [
        "image_embeddings",
        "point_coords",
        "point_labels",
        "mask_input",
        "has_mask_input",
        "orig_im_size",
    ]
    assert all(t == "tensor(float)" for t, _ in inputs.values())
    assert inputs["image_embeddings"][1] == [1, 256, 64, 64]
    assert inputs["orig_im_size"][1] == [2]
    assert [o.name for o in local.session.get_outputs()] == [
        "masks",
        "iou_predictions",
        "low_res_masks",
    ]

    def server(**prompt: object) -> dict:
        answer = c.post("/v1/segment", json={"image_id": image_id, **prompt})
        assert answer.status_code == 200, answer.text
        return answer.json()

    # three foreground points: the single-mask output on both sides
    points = [[250.0, 200.0], [300.0, 180.0], [270.0, 240.0]]
    want = server(points=points, labels=[1, 1, 1], num_masks=1)
    out = local.run(points, [1, 1, 1])
    assert out["masks"].shape == (1, 1, 384, 512)
    assert out["low_res_masks"].shape == (1, 1, 256, 256)
    mask = out["masks"][0, 0] > 0
    assert mask.sum() > 100
    assert iou(mask, _rle_mask(want["masks"][0])) >= 0.99
    assert abs(float(out["iou_predictions"][0, 0]) - want["masks"][0]["score"]) < 1e-3

    # a box: the best-scored of the three multimask outputs on both sides
    box = [120.0, 90.0, 400.0, 330.0]
    want = server(box=box, num_masks=3)
    best = max(want["masks"], key=lambda m: m["score"])
    out = local.run(box=box)
    mask = out["masks"][0, 0] > 0
    assert mask.sum() > 100
    assert iou(mask, _rle_mask(best)) >= 0.99
    assert abs(float(out["iou_predictions"][0, 0]) - best["score"]) < 1e-3

    # refinement: one click (best of three), then a second click with the previous
    # low_res_masks as mask_input (the server's mask_input_id holds the same logits)
    first = server(points=[[250.0, 200.0]], labels=[1], num_masks=3)
    first_local = local.run([[250.0, 200.0]], [1])
    best = max(first["masks"], key=lambda m: m["score"])
    assert iou(first_local["masks"][0, 0] > 0, _rle_mask(best)) >= 0.99
    two = [[250.0, 200.0], [330.0, 260.0]]
    want = server(points=two, labels=[1, 0], mask_input_id=first["mask_input_id"], num_masks=1)
    out = local.run(two, [1, 0], mask_input=first_local["low_res_masks"])
    mask = out["masks"][0, 0] > 0
    assert iou(mask, _rle_mask(want["masks"][0])) >= 0.99
    unrefined = local.run(two, [1, 0])["masks"][0, 0] > 0
    assert (unrefined != mask).any()  # the mask input changed the answer

    # CVAT's variant: bounds and a uint8 mask cropped to them, the same mask
    cvat = c.get("/v1/models/decoder.onnx", params={"variant": "cvat"})
    assert cvat.status_code == 200, cvat.text
    assert cvat.headers["etag"] != dec.headers["etag"]
    cvat_local = LocalDecoder(cvat.content, embedding, width, height)
    names = [o.name for o in cvat_local.session.get_outputs()]
    assert names == ["xtl", "ytl", "xbr", "ybr", "masks", "low_res_masks"]
    res = cvat_local.run(points, [1, 1, 1], pad=False)  # as CVAT's index.tsx feeds it
    full = local.run(points, [1, 1, 1])["masks"][0, 0] > 0
    ys, xs = np.nonzero(full)
    bounds = [int(res[k][0]) for k in ("xtl", "ytl", "xbr", "ybr")]
    assert bounds == [xs.min(), ys.min(), xs.max(), ys.max()]
    assert res["masks"].dtype == np.uint8
    crop = full[bounds[1] : bounds[3] + 1, bounds[0] : bounds[2] + 1]
    np.testing.assert_array_equal(res["masks"][0, 0], crop.astype(np.uint8) * 255)
    assert c.get("/v1/models/decoder.onnx", params={"variant": "nope"}).status_code == 422

    # the multimask variant (the script without --return-single-mask): every candidate, as
    # /v1/segment's num_masks 1 (token 0) and 3 (tokens 1-3) answer
    multi = c.get("/v1/models/decoder.onnx", params={"variant": "multimask"})
    assert multi.status_code == 200, multi.text
    multi_local = LocalDecoder(multi.content, embedding, width, height)
    res = multi_local.run(box=box)
    assert res["masks"].shape == (1, 4, 384, 512) and res["low_res_masks"].shape[1] == 4
    for want, index in (
        (server(box=box, num_masks=1)["masks"], [0]),
        (server(box=box, num_masks=3)["masks"], [1, 2, 3]),
    ):
        for item, k in zip(want, index):
            assert iou(res["masks"][0, k] > 0, _rle_mask(item)) >= 0.99
            assert abs(float(res["iou_predictions"][0, k]) - item["score"]) < 1e-3

    models = c.get("/v1/models").json()["models"]
    assert len(models) == 1
    assert models[0]["fingerprint"] == backend.fingerprint
    assert models[0]["embedding"] == {"shape": [1, 256, 64, 64], "dtype": "float32"}
    assert models[0]["decoder_url"] == "/v1/models/decoder.onnx"
    assert models[0]["decoder_urls"]["cvat"] == "/v1/models/decoder.onnx?variant=cvat"
    assert models[0]["decoder_urls"]["multimask"] == "/v1/models/decoder.onnx?variant=multimask"
    assert models[0]["embedding_url"] == "/v1/embeddings/{image_id}"


# -- the downloads' HTTP behaviour (the deterministic fake backend) ------------------------


def _embed(rs: RunningService, seed: int = 0) -> str:
    r = rs.client.post("/v1/embed", content=png_bytes(test_image(seed=seed)), headers=PNG)
    assert r.status_code == 200, r.text
    return r.json()["image_id"]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_embedding_npy_etag_304_404(start_service, dtype: str) -> None:
    rs: RunningService = start_service(cache_dtype=dtype)
    image_id = _embed(rs)
    r = rs.client.get(f"/v1/embeddings/{image_id}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy"
    array = np.load(io.BytesIO(r.content), allow_pickle=False)
    assert array.shape == (1, 256, 64, 64) and array.dtype == np.dtype(dtype)
    assert np.isfinite(array).all() and np.abs(array).max() > 0
    etag = r.headers["etag"]
    assert image_id in etag and dtype in etag
    assert "immutable" in r.headers["cache-control"]
    # the same bytes as the embedding the core decodes from
    import asyncio

    emb = asyncio.run(rs.service.cache.get_embedding(image_id))[0]  # type: ignore[union-attr]
    np.testing.assert_array_equal(array.astype(np.float32), emb.embedding.numpy())
    # upper-case ids are the same resource
    assert rs.client.get(f"/v1/embeddings/{image_id.upper()}").headers["etag"] == etag

    for tag in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        cached = rs.client.get(f"/v1/embeddings/{image_id}", headers={"if-none-match": tag})
        assert cached.status_code == 304, tag
        assert cached.content == b"" and cached.headers["etag"] == etag
    stale = rs.client.get(f"/v1/embeddings/{image_id}", headers={"if-none-match": '"old"'})
    assert stale.status_code == 200 and stale.content == r.content

    # HEAD keeps its meaning: exists, no body
    head = rs.client.head(f"/v1/embeddings/{image_id}")
    assert head.status_code == 200 and head.content == b""

    missing = "0" * 64
    r = rs.client.get(f"/v1/embeddings/{missing}")
    assert r.status_code == 404
    assert r.json()["code"] == "embedding_not_found"
    assert rs.client.head(f"/v1/embeddings/{missing}").status_code == 404
    r = rs.client.get(f"/v1/embeddings/{missing}", headers={"if-none-match": "*"})
    assert r.status_code == 404  # nothing to match: no 304 for an absent embedding
    assert rs.client.get("/v1/embeddings/not-hex").status_code == 422
    assert rs.client.delete(f"/v1/embeddings/{image_id}").status_code == 204
    assert rs.client.get(f"/v1/embeddings/{image_id}").json()["code"] == "embedding_not_found"


def test_downloads_need_the_api_key(start_service) -> None:
    rs: RunningService = start_service(api_keys="browser-key-1234")
    key = {"x-api-key": "browser-key-1234"}
    r = rs.client.post("/v1/embed", content=png_bytes(test_image(seed=1)), headers={**PNG, **key})
    image_id = r.json()["image_id"]
    for path in (f"/v1/embeddings/{image_id}", "/v1/models", "/v1/models/decoder.onnx"):
        r = rs.client.get(path)
        assert r.status_code == 401 and r.json()["code"] == "unauthenticated", path
    assert rs.client.get(f"/v1/embeddings/{image_id}", headers=key).status_code == 200
    bearer = {"authorization": "Bearer browser-key-1234"}
    assert rs.client.get("/v1/models", headers=bearer).status_code == 200


def test_decoder_needs_a_pytorch_model(start_service) -> None:
    """The fake backend has no EdgeSam module to export: a clear 501, no stack trace."""
    rs: RunningService = start_service()
    r = rs.client.get("/v1/models/decoder.onnx")
    assert r.status_code == 501
    assert r.json()["code"] == "unavailable_feature"
    assert "checkpoint" in r.json()["message"]


def test_cors_off_by_default(start_service) -> None:
    rs: RunningService = start_service()
    r = rs.client.get("/v1/models", headers={"origin": "http://page.example"})
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


def test_cors_lets_a_listed_origin_embed_and_download(start_service) -> None:
    origin = "http://page.example:8080"
    rs: RunningService = start_service(
        cors_origins=f"{origin}, https://other.example", api_keys="browser-key-1234"
    )
    key = {"x-api-key": "browser-key-1234"}
    # the preflight carries no key and is answered
    pre = rs.client.options(
        "/v1/embeddings/" + "a" * 64,
        headers={
            "origin": origin,
            "access-control-request-method": "GET",
            "access-control-request-headers": "x-api-key, if-none-match",
        },
    )
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == origin
    allowed = pre.headers["access-control-allow-headers"].lower()
    assert "x-api-key" in allowed and "if-none-match" in allowed
    r = rs.client.post(
        "/v1/embed",
        content=png_bytes(test_image(seed=2)),
        headers={**PNG, **key, "origin": origin},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    image_id = r.json()["image_id"]
    r = rs.client.get(f"/v1/embeddings/{image_id}", headers={**key, "origin": origin})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "etag" in exposed and "x-edgesam-width" in exposed
    # errors carry the CORS headers too, so the page can read the code
    r = rs.client.get(f"/v1/embeddings/{image_id}", headers={"origin": origin})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
    # an origin not listed gets no permission
    r = rs.client.get("/v1/models", headers={**key, "origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_origins_are_checked() -> None:
    from pydantic import ValidationError

    from service.config import Settings

    assert Settings(cors_origins="http://a.example/, https://b.example").cors_origins == [
        "http://a.example",
        "https://b.example",
    ]
    with pytest.raises(ValidationError, match="not an origin"):
        Settings(cors_origins="a.example")


def test_grpc_get_embedding(start_grpc_service) -> None:
    import grpc

    from edgesam_client.grpc_stubs import segmentation_pb2 as pb

    both = start_grpc_service(cache_dtype="float16")
    if True:
        image_id = both.http.post(
            "/v1/embed", content=png_bytes(test_image(seed=3)), headers=PNG
        ).json()["image_id"]
        got = both.stub.GetEmbedding(pb.EmbeddingRef(image_id=image_id.upper()), timeout=10)
        assert got.image_id == image_id
        assert list(got.shape) == [1, 256, 64, 64] and got.dtype == "float16"
        assert (got.width, got.height) == (128, 96)
        assert got.fingerprint == both.service.backend.fingerprint  # type: ignore[union-attr]
        array = np.frombuffer(got.data, dtype="<f2").reshape(tuple(got.shape))
        npy = both.http.get(f"/v1/embeddings/{image_id}").content
        np.testing.assert_array_equal(array, np.load(io.BytesIO(npy)))
        with pytest.raises(grpc.RpcError) as err:
            both.stub.GetEmbedding(pb.EmbeddingRef(image_id="0" * 64), timeout=10)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        codes = dict(err.value.trailing_metadata() or ())
        assert codes.get("edgesam-error-code") == "embedding_not_found"
