"""The client library and the `edgesam` command line against a real service (HTTP and gRPC
on loopback, real Redis, fake backend): the same answers on both transports, sync and async,
sessions, transparent re-embed, retries on overload."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json

import numpy as np
import pytest
from PIL import Image

from edgesam_client import EdgeSamError, RetryPolicy, connect, connect_async
from edgesam_client.cli import main as cli_main
from edgesam_client.grpc_transport import GrpcSession
from service.fake_backend import FakeBackend
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image
from tests.integration.grpc_util import BothTransports

start_grpc_service = grpc_util.start_grpc_service  # the fixture


@pytest.fixture
def both(start_grpc_service, redis_url: str, redis_prefix: str) -> BothTransports:  # noqa: ANN001
    return start_grpc_service(
        redis_url=redis_url, redis_key_prefix=redis_prefix, cache_dtype="float32"
    )


def targets(both: BothTransports) -> dict[str, str]:
    return {"http": both.url, "grpc": f"grpc://{both.target}"}


def test_sync_clients_agree_and_decode_masks(both: BothTransports) -> None:
    image = test_image()
    answers = {}
    for name, target in targets(both).items():
        with connect(target) as es:
            emb = es.embed(image)
            assert (emb.width, emb.height) == (128, 96)
            res = es.segment(emb.image_id, points=[[64, 48]], outputs=("rle", "png", "polygons"))
            mask = res.best
            assert mask.array.shape == (96, 128) and mask.array.dtype == bool
            assert mask.array[48, 64] and not mask.array[0, 0]
            assert int(mask.array.sum()) == mask.area
            png_only = es.segment(emb.image_id, points=[[64, 48]], outputs=("png",)).best
            assert png_only.rle is None and np.array_equal(png_only.array, mask.array)
            every = es.everything(
                emb.image_id, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0
            )
            assert every.masks and every.masks[0].point is not None
            answers[name] = (mask.rle, [m.rle for m in every.masks], res.mask_input_id)
    assert answers["http"][:2] == answers["grpc"][:2]


def test_transparent_re_embed_on_both_transports(both: BothTransports) -> None:
    image = test_image(seed=4)
    for target in targets(both).values():
        with connect(target) as es:
            image_id = es.embed(image).image_id
            assert es.delete_embedding(image_id) is True
            assert es.has_embedding(image_id) is False
            res = es.segment(image_id, box=[10, 10, 60, 60])  # healed: embedded again
            assert res.masks and es.has_embedding(image_id) is True
            with connect(target) as stranger:  # never saw the bytes: cannot heal
                es.delete_embedding(image_id)
                with pytest.raises(EdgeSamError) as info:
                    stranger.segment(image_id, box=[10, 10, 60, 60])
                assert info.value.code == "embedding_not_found"


def test_sessions_agree_across_transports(both: BothTransports) -> None:
    image = test_image(seed=2)
    answers = {}
    for name, target in targets(both).items():
        with connect(target) as es, es.session(image) as session:
            if name == "grpc":
                assert isinstance(session, GrpcSession)
            first = session.click(64, 48)
            second = session.click(90, 60)
            with pytest.raises(EdgeSamError) as info:
                session.click(500, 500)
            assert info.value.code == "invalid_prompt"
            negative = session.click(70, 50, positive=False)
            boxed = session.box(30, 20, 110, 90)
            undone = session.undo()
            cleared = session.reset()
            assert undone.best.rle == negative.best.rle and cleared.masks == []
            answers[name] = [r.best.rle for r in (first, second, negative, boxed)]
    assert answers["http"] == answers["grpc"]


def test_grpc_session_reopens_with_the_bytes_after_expiry(both: BothTransports) -> None:
    image = test_image(seed=6)
    with connect(f"grpc://{both.target}") as es:
        image_id = es.embed(image).image_id
        es.delete_embedding(image_id)
        with es.session(image_id) as session:  # NOT_FOUND, then started again with the bytes
            assert session.image_id == image_id
            assert session.click(10, 10).masks


def test_async_clients(both: BothTransports) -> None:
    async def scenario(target: str) -> tuple:
        async with connect_async(target) as es:
            emb = await es.embed(test_image(seed=8))
            res = await es.segment(emb.image_id, points=[[20, 30]], labels=[1])
            await es.delete_embedding(emb.image_id)
            healed = await es.segment(emb.image_id, points=[[20, 30]])
            session = await es.session(emb.image_id)
            async with session:
                clicks = [await session.click(20, 30), await session.click(40, 30)]
                with pytest.raises(EdgeSamError):
                    await session.click(-5, 0)
                undone = await session.undo()
            return res.best.rle, healed.best.rle, [c.best.rle for c in clicks], undone.best.rle

    results = {name: asyncio.run(scenario(t)) for name, t in targets(both).items()}
    assert results["http"] == results["grpc"]
    rle, healed, clicks, undone = results["grpc"]
    assert rle == healed == clicks[0] == undone and clicks[1] != clicks[0]


def test_overload_is_retried_until_served(  # noqa: ANN001
    start_grpc_service, redis_url: str, redis_prefix: str
) -> None:
    both = start_grpc_service(
        backend=FakeBackend(encode_delay_s=0.3),
        redis_url=redis_url,
        redis_key_prefix=redis_prefix,
        encode_max_queue=1,
        encode_workers=1,
    )
    policy = RetryPolicy(max_retries=20, base_s=0.05, cap_s=0.3)
    for offset, target in enumerate(targets(both).values()):
        images = [png_bytes(test_image(seed=10 * offset + s)) for s in range(4)]
        with connect(target, retry=policy) as es:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                results = list(pool.map(es.embed, images))
            assert len({r.image_id for r in results}) == 4
            assert not any(r.cached for r in results)
    text = both.http.get("/metrics").text
    assert 'status="UNAVAILABLE"' in text and 'status="503"' in text  # there were refusals


def test_cli_against_both_transports(both: BothTransports, tmp_path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "photo.png"
    Image.fromarray(test_image(seed=3)).save(path)
    for name, target in targets(both).items():
        assert cli_main(["--server", target, "embed", str(path)]) == 0
        embedded = json.loads(capsys.readouterr().out)
        assert len(embedded["image_id"]) == 64 and embedded["width"] == 128
        out = tmp_path / f"{name}.png"
        argv = ["--server", target, "segment", str(path), "--point", "64,48"]
        argv += ["--negative", "10,10", "--box", "30,20,110,90", "-o", str(out)]
        assert cli_main(argv) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["overlay"] == str(out) and summary["masks"][0]["area"] > 0
        overlay = np.asarray(Image.open(out))
        original = np.asarray(Image.open(path))
        assert overlay.shape == original.shape and not np.array_equal(overlay, original)
        every_out = tmp_path / f"{name}-all.png"
        argv = ["--server", target, "everything", str(path), "--points-per-side", "4"]
        argv += ["--pred-iou-thresh", "0", "--stability-score-thresh", "0", "-o", str(every_out)]
        assert cli_main(argv) == 0
        assert json.loads(capsys.readouterr().out)["masks"] and every_out.is_file()
        assert cli_main(["--server", target, "segment", str(path), "--point", "900,900"]) == 1
        assert "invalid_prompt" in capsys.readouterr().err
    assert cli_main(["--server", both.url, "segment", str(path)]) == 2
    assert cli_main(["--server", both.url, "embed", str(tmp_path / "missing.png")]) == 2
