"""The gRPC contract: committed stubs are fresh, the error table maps every kind to both
transports, and messages translate to exactly the core's schema objects."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import grpc
import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest brings tomli before 3.11
    import tomli as tomllib

import service.errors as errors
from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from proto import generate
from service.errors import ERROR_TABLE, ServiceError
from service.grpc_convert import (
    everything_request_from_pb,
    outputs_from_pb,
    segment_request_from_pb,
    segment_result_to_pb,
)
from service.grpc_errors import error_from_code, status_code, status_of, trailers
from service.schemas import MaskItem, Rle, SegmentResult

IMAGE_ID = "ab" * 32


def test_committed_stubs_are_not_stale() -> None:
    stale = generate.stale_files()
    assert stale == [], f"regenerate with `python -m proto.generate`: {stale}"


def test_staleness_check_notices_a_changed_stub(tmp_path, monkeypatch, capsys) -> None:  # noqa: ANN001
    root = tmp_path / "proto"
    (root / "edgesam" / "v1").mkdir(parents=True)
    source = generate.PROTO_ROOT / "edgesam" / "v1" / "segmentation.proto"
    (root / "edgesam" / "v1" / "segmentation.proto").write_text(source.read_text())
    stubs = tmp_path / "clients" / "python" / "edgesam_client" / "_proto"
    monkeypatch.setattr(generate, "PROTO_ROOT", root)
    monkeypatch.setattr(generate, "STUB_ROOT", stubs)
    assert len(generate.stale_files()) == 3  # none written yet: all missing
    generate.generate(stubs)
    assert generate.stale_files() == []
    grpc_stub = stubs / "edgesam" / "v1" / "segmentation_pb2_grpc.py"
    grpc_stub.write_text(grpc_stub.read_text().replace("/Segment'", "/SegmentOld'"))
    assert generate.stale_files() == ["edgesam/v1/segmentation_pb2_grpc.py"]
    assert generate.main(["--check"]) == 1
    assert "stale: clients/python/edgesam_client/_proto/edgesam/v1/segmentation_pb2_grpc.py" in (
        capsys.readouterr().err
    )


def test_normalise_maps_generator_spellings_but_keeps_content() -> None:
    same = [
        ("class SegmentationStub(object):", "class SegmentationStub:"),
        ("        + f' but the generated code'", "        + ' but the generated code'"),
        (
            "    def __init__(self, cached: _Optional[bool] = ...) -> None: ...",
            "    def __init__(self, cached: bool = ...) -> None: ...",
        ),
        (
            "from typing import ClassVar as _ClassVar, Iterable as _Iterable\nx = 1",
            "from collections.abc import Iterable as _Iterable\nfrom typing import ClassVar\nx = 1",
        ),
        ("# Protobuf Python Version: 5.29.0", "# Protobuf Python Version: 7.35.1"),
    ]
    for old, new in same:
        assert generate.normalise(old) == generate.normalise(new), old
    differ = [
        (
            "    def __init__(self, cached: _Optional[int] = ...) -> None: ...",
            "    def __init__(self, cached: bool = ...) -> None: ...",
        ),
        ("class SegmentationStub(object):", "class SegmentStub:"),
        ("        + f' but {GRPC_VERSION}'", "        + ' but {GRPC_VERSION}'"),
    ]
    for old, new in differ:
        assert generate.normalise(old) != generate.normalise(new), old


def _lower_bounds(distribution: str) -> list[Version]:
    """The `>=` bound of every requirement on `distribution` in the server's and the
    client's pyproject.toml (all markers): the client ships the stubs, the server loads them."""
    repo = generate.PROTO_ROOT.parent
    lines = []
    for pyproject in (repo / "pyproject.toml", repo / "clients" / "python" / "pyproject.toml"):
        lines += tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    bounds = []
    for line in lines:
        req = Requirement(line)
        if req.name == distribution:
            lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
            assert lows, f"{line!r} needs a lower bound"
            bounds.append(max(lows))
    assert len(bounds) >= 2, distribution  # both distributions say
    return bounds


def test_committed_stubs_load_on_every_pinned_runtime() -> None:
    """The runtimes refuse gencode newer than themselves: the stubs must come from the
    generator pinned for Python 3.8 and be no newer than any protobuf/grpcio lower bound."""
    stub_dir = generate.STUB_ROOT / "edgesam" / "v1"
    pb2 = (stub_dir / "segmentation_pb2.py").read_text()
    gencode = Version(re.search(r"^# Protobuf Python Version: (\S+)$", pb2, re.M).group(1))
    checked = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", pb2)
    assert Version(".".join(checked.groups())) == gencode
    grpc_text = (stub_dir / "segmentation_pb2_grpc.py").read_text()
    grpc_gen = Version(re.search(r"^GRPC_GENERATED_VERSION = '(\S+)'$", grpc_text, re.M).group(1))
    assert grpc_gen.release[:2] == generate.STUB_GENERATOR
    assert all(low >= gencode for low in _lower_bounds("protobuf"))
    assert all(low >= grpc_gen for low in _lower_bounds("grpcio"))


def test_writing_stubs_needs_the_pinned_generator(monkeypatch, capsys) -> None:  # noqa: ANN001
    monkeypatch.setattr(generate, "generator_version", lambda: (1, 85))
    monkeypatch.setattr(generate, "generate", lambda out: pytest.fail("must not write"))
    assert generate.main([]) == 2
    assert "grpcio-tools==1.70.*" in capsys.readouterr().err


def test_stubs_import_relative_and_name_the_canonical_file() -> None:
    from edgesam_client._proto.edgesam.v1 import segmentation_pb2_grpc
    from edgesam_client.grpc_stubs import segmentation_pb2_grpc as public

    assert public is segmentation_pb2_grpc
    assert pb.__name__ == "edgesam_client._proto.edgesam.v1.segmentation_pb2"
    stub_dir = generate.STUB_ROOT / "edgesam" / "v1"
    assert stub_dir.parts[-6:-3] == ("clients", "python", "edgesam_client")
    assert Path(segmentation_pb2_grpc.__file__).resolve().parent == stub_dir
    # proto/ keeps the contract only
    assert not [p for p in generate.PROTO_ROOT.rglob("*_pb2*") if "__pycache__" not in p.parts]

    assert pb.DESCRIPTOR.name == "edgesam/v1/segmentation.proto"
    assert pb.DESCRIPTOR.package == "edgesam.v1"
    text = open(segmentation_pb2_grpc.__file__).read()  # noqa: SIM115
    assert "from . import segmentation_pb2" in text and "from edgesam" not in text


def _kinds() -> set[str]:
    found, stack = set(), [ServiceError]
    while stack:
        cls = stack.pop()
        found.add(cls.kind)
        stack.extend(cls.__subclasses__())
    return found


def test_every_error_kind_has_an_http_and_a_grpc_mapping() -> None:
    assert _kinds() <= set(ERROR_TABLE)
    for kind, spec in ERROR_TABLE.items():
        assert 400 <= spec.http_status < 600, kind
        assert isinstance(getattr(grpc.StatusCode, spec.grpc_status, None), grpc.StatusCode), kind
        assert spec.grpc_status != "OK", kind
    expected = {
        "invalid_prompt": grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
        "embedding_not_found": grpc.StatusCode.NOT_FOUND,
        "overloaded": grpc.StatusCode.UNAVAILABLE,
        "payload_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
        "not_ready": grpc.StatusCode.UNAVAILABLE,
    }
    for kind, code in expected.items():
        assert getattr(grpc.StatusCode, ERROR_TABLE[kind].grpc_status) == code


def test_errors_round_trip_through_status_and_trailers() -> None:
    for cls in [errors.ServiceError, *errors.ServiceError.__subclasses__()]:
        exc = cls("a sentence", retry_after=3)
        code, details, trailing = status_of(exc)
        assert code == status_code(exc) and details == "a sentence"
        meta = dict(trailing)
        assert meta["edgesam-error-code"] == exc.code
        assert ("retry-after" in meta) == (code == grpc.StatusCode.UNAVAILABLE)
        back = error_from_code(meta["edgesam-error-code"], details, 3)
        assert type(back).kind == exc.kind and back.retry_after == 3
    assert dict(trailers(errors.Overloaded("full")))["retry-after"] == "1"
    hidden = status_of(KeyError("secret"))
    assert hidden[0] == grpc.StatusCode.INTERNAL and "secret" not in hidden[1]
    assert isinstance(error_from_code("no-such-code", "x"), errors.InternalError)


def test_segment_request_translation() -> None:
    req = segment_request_from_pb(
        pb.SegmentRequest(
            image_id=IMAGE_ID,
            points=[pb.Point(x=1.5, y=2)],
            labels=[1],
            box=pb.Box(x0=0, y0=0, x1=4, y1=5),
            num_masks=3,
            outputs=[pb.OUTPUT_FORMAT_PNG, pb.OUTPUT_FORMAT_RLE],
        )
    )
    assert req.points == [(1.5, 2.0)] and req.labels == [1] and req.box == (0, 0, 4, 5)
    assert req.boxes is None and req.num_masks == 3 and req.output == ["png", "rle"]
    plain = segment_request_from_pb(pb.SegmentRequest(image_id=IMAGE_ID))
    assert plain.points is None and plain.box is None and plain.num_masks == 1
    assert plain.output == ["rle"] and plain.mask_input_id is None
    for bad in (
        pb.SegmentRequest(image_id="xyz"),
        pb.SegmentRequest(image_id=IMAGE_ID, labels=[3], points=[pb.Point()]),
        pb.SegmentRequest(image_id=IMAGE_ID, num_masks=2),
        pb.SegmentRequest(image_id=IMAGE_ID, outputs=[9]),
    ):
        with pytest.raises(errors.InvalidRequest):
            segment_request_from_pb(bad)
    with pytest.raises(errors.InvalidRequest, match="unknown output format 0"):
        outputs_from_pb([0])


def test_everything_request_keeps_http_defaults() -> None:
    req = everything_request_from_pb(pb.EverythingRequest(image_id=IMAGE_ID, max_masks=5))
    assert req.max_masks == 5 and req.points_per_side == 32 and req.pred_iou_thresh == 0.88
    with pytest.raises(errors.InvalidRequest, match="points_per_side"):
        everything_request_from_pb(pb.EverythingRequest(image_id=IMAGE_ID, points_per_side=0))


def test_segment_result_translation() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    result = SegmentResult(
        image_id=IMAGE_ID,
        width=4,
        height=3,
        masks=[
            MaskItem(
                prompt_index=0,
                mask_index=2,
                score=0.5,
                stability_score=0.25,
                bbox=(1, 0, 2, 3),
                area=6,
                rle=Rle(size=(3, 4), counts="3<0"),
                png=base64.b64encode(png).decode(),
                polygons=[[1.0, 0.0, 2.0, 0.0, 2.0, 2.0]],
            )
        ],
        mask_input_id="c" * 32,
        mask_input_ids=["c" * 32],
    )
    msg = segment_result_to_pb(result)
    (mask,) = msg.masks
    assert mask.png == png and mask.rle.counts == "3<0" and list(mask.rle.size) == [3, 4]
    assert (mask.bbox.x, mask.bbox.y, mask.bbox.width, mask.bbox.height) == (1, 0, 2, 3)
    assert list(mask.polygons[0].xy) == [1.0, 0.0, 2.0, 0.0, 2.0, 2.0]
    assert mask.mask_index == 2 and msg.mask_input_id == "c" * 32


def test_use_priors_crosses_the_grpc_boundary() -> None:
    from service.grpc_convert import segment_request_from_pb

    base = {"image_id": "a" * 64, "points": [pb.Point(x=1, y=2)], "labels": [1]}
    assert segment_request_from_pb(pb.SegmentRequest(**base)).use_priors is True
    off = segment_request_from_pb(pb.SegmentRequest(**base, use_priors=False))
    assert off.use_priors is False
