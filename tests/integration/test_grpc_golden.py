"""Golden masks of ../shared/reference/case_a through gRPC Embed then Segment (and through
an interactive session) equal those through HTTP, and the official implementation's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgesam_client import connect
from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.rle import decode as rle_decode
from tests.conftest import REFERENCE_DIR
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes
from tests.integration.grpc_util import BothTransports

start_grpc_service = grpc_util.start_grpc_service  # the fixture

CASE_A = REFERENCE_DIR / "case_a"
CALLS = ("p1", "p2", "p3", "p4")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    path = CASE_A / "golden.npz"
    if not path.is_file():
        pytest.fail(f"reference data not found at {path}")
    with np.load(path) as data:
        return {k: data[k] for k in data.files if k == "image" or k.startswith(CALLS)}


@pytest.fixture(scope="module")
def case_a_backend():  # noqa: ANN201
    import torch

    from engine.loader import load_model

    torch.set_num_threads(2)
    return load_model(Path(CASE_A / "weights.safetensors"))


def prompt(golden: dict[str, np.ndarray], name: str) -> dict:
    body: dict = {}
    if f"{name}_point_coords" in golden:
        body["points"] = golden[f"{name}_point_coords"].tolist()
        body["labels"] = golden[f"{name}_point_labels"].tolist()
    if f"{name}_box" in golden:
        body["box"] = golden[f"{name}_box"].tolist()
    return body


def assert_close_to_golden(mask: np.ndarray, ref: np.ndarray) -> None:
    """As the engine's golden tests: equal but for a handful of pixels at logit ~0."""
    assert mask.shape == ref.shape
    assert int((mask != ref).sum()) <= 5


def test_golden_masks_grpc_equal_http(
    start_grpc_service,  # noqa: ANN001
    case_a_backend,  # noqa: ANN001
    golden: dict[str, np.ndarray],
    redis_url: str,
    redis_prefix: str,
) -> None:
    both: BothTransports = start_grpc_service(
        backend=case_a_backend,
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        cache_dtype="float32",
    )
    data = png_bytes(golden["image"])
    embedded = both.stub.Embed(pb.EmbedRequest(image=data, content_type="image/png"), timeout=120)
    assert (embedded.width, embedded.height, embedded.cached) == (512, 512, False)
    r = both.http.post("/v1/embed", content=data, headers={"content-type": "image/png"})
    assert r.json() == {
        "image_id": embedded.image_id,
        "width": 512,
        "height": 512,
        "cached": True,
        "expires_in": r.json()["expires_in"],
    }
    with connect(f"grpc://{both.target}") as grpc_client, connect(both.url) as http_client:
        for name in CALLS:
            body = prompt(golden, name)
            via_grpc = grpc_client.segment(embedded.image_id, **body)
            via_http = http_client.segment(embedded.image_id, **body)
            (g,), (h,) = via_grpc.masks, via_http.masks
            assert g.rle == h.rle, name
            assert g.score == pytest.approx(h.score) and g.area == h.area
            assert g.score == pytest.approx(float(golden[f"{name}_iou"][0]), abs=1e-4)
            assert_close_to_golden(g.array, golden[f"{name}_masks"][0])
            assert np.array_equal(rle_decode(g.rle.as_dict()), g.array)

        # the interactive session's first click is p1; its later answers refine (mask_input)
        with grpc_client.session(embedded.image_id) as session:
            ((x, y),) = golden["p1_point_coords"].tolist()
            first = session.click(x, y)
            assert_close_to_golden(first.masks[0].array, golden["p1_masks"][0])
            second = session.click(120.0, 330.0)
            chained = http_client.segment(
                embedded.image_id,
                points=[[x, y], [120.0, 330.0]],
                mask_input_id=http_client.segment(embedded.image_id, points=[[x, y]]).mask_input_id,
            )
            assert int((second.masks[0].array != chained.masks[0].array).sum()) <= 5
