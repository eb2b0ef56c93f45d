"""The client library without a server: RLE in pure numpy, the retry policy (overload
only), the transparent re-embed, image handling, and no torch on import."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from edgesam_client import EdgeSamError, EmbeddingNotFound, RetryPolicy, SyncClient
from edgesam_client import rle as rle_codec
from edgesam_client._common import ImageMemory, image_bytes, image_id_of, prompt_fields
from edgesam_client.errors import make_error
from edgesam_client.results import EmbedResult, SegmentResult
from tests.conftest import REPO_ROOT


def test_rle_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for i in range(200):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        if i % 4 == 0:
            mask = np.zeros((h, w), bool)
            mask[h // 4 : h // 2 + 1, w // 3 :] = True
        elif i % 4 == 1:
            mask = np.full((h, w), i % 8 == 1)
        else:
            mask = rng.random((h, w)) < rng.random()
        ref = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = ref["counts"].decode()
        assert rle_codec.encode(mask) == {"size": [h, w], "counts": counts}
        assert np.array_equal(rle_codec.decode({"size": [h, w], "counts": counts}), mask)


def test_rle_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        rle_codec.decode({"size": [2, 2], "counts": "5"})  # covers 5 pixels, not 4
    with pytest.raises(ValueError):
        rle_codec.decode({"size": [2, 2], "counts": "0\x7f"})


class FakeTransport(SyncClient):
    """Scripted raw calls: each call pops the next outcome (an exception or a value)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        super().__init__(RetryPolicy(max_retries=2, base_s=0.0, cap_s=0.0))
        self.script = script
        self.calls: list[str] = []

    def _next(self, name: str) -> Any:
        self.calls.append(name)
        outcome = self.script[name].pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        self._next("embed")
        return EmbedResult(image_id_of(data), 4, 3, False, 60)

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return self._next("segment")

    def _has_raw(self, image_id: str) -> bool:
        return self._next("has")

    def close(self) -> None:
        pass


OK = SegmentResult("a" * 64, 4, 3, [])


def overloaded() -> EdgeSamError:
    return make_error("overloaded", "full", 503, 0.0)


def test_retries_overload_only_and_boundedly(monkeypatch) -> None:  # noqa: ANN001
    slept: list[float] = []
    monkeypatch.setattr("edgesam_client._base.time.sleep", slept.append)
    t = FakeTransport({"segment": [overloaded(), overloaded(), OK]})
    assert t.segment("a" * 64, points=[[1, 1]]) is OK
    assert t.calls == ["segment"] * 3 and len(slept) == 2
    t = FakeTransport({"segment": [overloaded()] * 3})
    with pytest.raises(EdgeSamError) as info:
        t.segment("a" * 64, box=[0, 0, 1, 1])
    assert info.value.code == "overloaded" and len(t.calls) == 3  # 1 + max_retries
    for code in ("not_ready", "invalid_prompt", "backend_error"):
        t = FakeTransport({"segment": [make_error(code, "no", 503), OK]})
        with pytest.raises(EdgeSamError):
            t.segment("a" * 64, box=[0, 0, 1, 1])
        assert t.calls == ["segment"]


def test_retry_policy_backoff_honours_retry_after() -> None:
    policy = RetryPolicy(max_retries=3, base_s=0.1, cap_s=2.0)
    assert 0.1 <= policy.delay(0, None) <= 0.125
    assert 0.4 <= policy.delay(2, None) <= 0.5
    assert 1.0 <= policy.delay(0, 1.0) <= 1.25
    assert policy.delay(10, None) <= 2.5
    assert not policy.should_retry(make_error("overloaded", "x"), 3)


def test_embedding_not_found_is_healed_by_embedding_again() -> None:
    data, _ = image_bytes(np.zeros((3, 4, 3), np.uint8))
    gone = make_error("embedding_not_found", "expired", 404)
    t = FakeTransport({"embed": [None, None], "segment": [gone, OK]})
    image_id = t.embed(data).image_id
    assert t.segment(image_id, points=[[1, 1]]) is OK
    assert t.calls == ["embed", "segment", "embed", "segment"]
    # an image_id this client never embedded cannot be healed
    t = FakeTransport({"segment": [gone]})
    with pytest.raises(EmbeddingNotFound):
        t.segment("b" * 64, points=[[1, 1]])


def test_an_upper_case_image_id_is_an_id_and_heals_like_any_other() -> None:
    data, _ = image_bytes(np.zeros((3, 4, 3), np.uint8))
    gone = make_error("embedding_not_found", "expired", 404)
    t = FakeTransport({"embed": [None, None], "segment": [gone, OK]})
    image_id = t.embed(data).image_id
    assert t.image_id(image_id.upper()) == image_id  # an id, not a file name
    assert t.segment(image_id.upper(), points=[[1, 1]]) is OK
    assert t.calls == ["embed", "segment", "embed", "segment"]


def test_segment_with_an_image_embeds_only_when_the_server_lacks_it() -> None:
    image = np.zeros((3, 4, 3), np.uint8)
    t = FakeTransport({"has": [False], "embed": [None], "segment": [OK, OK]})
    t.segment(image, points=[[1, 1]])
    t.segment(image, points=[[1, 1]])  # remembered: no second lookup
    assert t.calls == ["has", "embed", "segment", "segment"]
    t = FakeTransport({"has": [True], "segment": [OK]})
    t.segment(image, points=[[1, 1]])
    assert t.calls == ["has", "segment"]


def test_image_inputs_and_memory(tmp_path) -> None:  # noqa: ANN001
    array = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    data, media = image_bytes(array)
    assert media == "image/png"
    path = tmp_path / "x.png"
    path.write_bytes(data)
    assert image_bytes(path) == (data, "image/png")
    assert image_bytes(str(path))[0] == data
    with pytest.raises(TypeError):
        image_bytes(np.zeros((2, 2), np.float32))
    memory = ImageMemory(max_bytes=10)
    memory.put("a", b"12345", "x")
    memory.put("b", b"123456", "x")
    assert memory.get("a") is None and memory.get("b") == (b"123456", "x")
    memory.put("c", b"x" * 11, "x")  # larger than the whole memory: not kept
    assert memory.get("c") is None


def test_prompt_fields() -> None:
    assert prompt_fields(points=[(1, 2), (3, 4)]) == {
        "points": [[1.0, 2.0], [3.0, 4.0]],
        "labels": [1, 1],
    }
    assert prompt_fields(points=np.array([[1, 2]]), labels=[0], box=(0, 0, 5, 5)) == {
        "points": [[1.0, 2.0]],
        "labels": [0],
        "box": [0.0, 0.0, 5.0, 5.0],
    }


def test_importing_the_client_never_imports_the_server() -> None:
    code = (
        "import sys, edgesam_client, edgesam_client.cli, edgesam_client.grpc_transport,"
        " edgesam_client.http_transport;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'engine', 'service', 'cv2', 'pycocotools', 'fastapi'));"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_use_priors_is_sent_only_when_turned_off() -> None:
    from edgesam_client._base import segment_fields
    from edgesam_client.grpc_transport import segment_message

    on = segment_fields("a" * 64, [[1, 2]], [1], None, None, 1, None, ("rle",))
    off = segment_fields("a" * 64, [[1, 2]], [1], None, None, 1, None, ("rle",), False)
    assert "use_priors" not in on and off["use_priors"] is False
    assert not segment_message(on).HasField("use_priors")
    msg = segment_message(off)
    assert msg.HasField("use_priors") and msg.use_priors is False


def test_load_rgb_reads_images_as_the_server_does(tmp_path) -> None:  # noqa: ANN001
    """16-bit grey by its high byte and EXIF orientation applied, like service.codecs."""
    from PIL import Image

    from edgesam_client.cli import load_rgb
    from service import codecs

    rng = np.random.default_rng(3)
    grey = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    server = codecs.decode_image(path.read_bytes(), "image/png", 10_000)
    np.testing.assert_array_equal(load_rgb(path), server)
    assert server.max() > 0 and server.min() < 255  # not clipped to white
    rotated = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    rotated.save(path, exif=exif.tobytes())
    server = codecs.decode_image(path.read_bytes(), "image/jpeg", 10_000)
    np.testing.assert_array_equal(load_rgb(path), server)
    assert server.shape == (40, 30, 3)
