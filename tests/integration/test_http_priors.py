"""Granularity priors in the service (EDGESAM_PRIORS_CHECKPOINT): a point-only prompt also gets
the best proposal containing the point as a box; `use_priors: false` turns that off; the
proposals travel with the embedding through Redis to another replica."""

import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.core import decode_points, encode_image_with_priors, prompts_to_points, with_prior_box
from engine.loader import load_model
from engine.priors import GranularityPriors, load_priors
from tests.integration.conftest import png_bytes

PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def image(reference_dir: Path) -> np.ndarray:
    with np.load(reference_dir / "case_a" / "golden.npz") as z:
        return z["image"]


@pytest.fixture(scope="module")
def priors_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    priors = GranularityPriors()
    with torch.no_grad():  # untrained head: confident, sizeable boxes everywhere
        priors.rpn_head.cls.bias.fill_(3.0)
        priors.rpn_head.reg.bias.fill_(1.0)
    path = tmp_path_factory.mktemp("priors") / "edge_sam_rpn.pth"
    torch.save(priors.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def backend(reference_dir: Path):  # type: ignore[no-untyped-def]
    return load_model(reference_dir / "case_a" / "weights.safetensors")


def _segment(client, image_id: str, **extra) -> dict:  # noqa: ANN001
    r = client.post(
        "/v1/segment",
        json={"image_id": image_id, "points": [[225, 110]], "labels": [1], **extra},
    )
    assert r.status_code == 200, r.text
    return r.json()["masks"][0]


def test_priors_add_a_box_and_can_be_turned_off(
    start_service, backend, priors_file: Path, image: np.ndarray, redis_url: str
) -> None:
    prefix = f"edgesam-test-{uuid.uuid4().hex[:8]}:"
    common = {"redis_url": redis_url, "redis_key_prefix": prefix}
    on = start_service(backend=backend, priors_checkpoint=priors_file, **common)
    image_id = on.client.post("/v1/embed", content=png_bytes(image), headers=PNG).json()["image_id"]
    with_priors = _segment(on.client, image_id)
    without = _segment(on.client, image_id, use_priors=False)
    assert with_priors["rle"]["counts"] != without["rle"]["counts"]

    # the same prompt computed in-process, with the prior box added
    emb = encode_image_with_priors(backend, load_priors(priors_file), image)
    coords, labels = prompts_to_points(emb.original_size, np.array([[225.0, 110.0]]), [1])
    coords, labels = with_prior_box(emb, coords, labels)
    assert labels.tolist() == [[1, 2, 3]]  # the point, then the box corners
    res = decode_points(backend, emb, coords, labels)
    assert abs(res.iou_predictions[0, 0].item() - with_priors["score"]) < 1e-3

    # a second replica sharing Redis gets the proposals with the embedding
    other = start_service(backend=backend, priors_checkpoint=priors_file, **common)
    again = _segment(other.client, image_id)
    assert abs(again["score"] - with_priors["score"]) < 1e-3
    for rs in (on, other):
        rs.client.delete(f"/v1/embeddings/{image_id}")


def test_priors_need_the_torch_backend(priors_file: Path) -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="EDGESAM_BACKEND=torch"):
        Settings(priors_checkpoint=priors_file, backend="onnxruntime")
