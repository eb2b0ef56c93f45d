"""The client library given several replicas, against real loopback servers (fake backend):
a port with nothing behind it is skipped, a replica stopped between calls is replaced by
the next one (which heals a missing embedding by embedding the remembered bytes again),
over HTTP, gRPC (sessions included) and the async client."""

from __future__ import annotations

import asyncio

from edgesam_client import connect, connect_async
from edgesam_client.failover import AsyncFailoverClient, FailoverClient
from tests.conftest import free_port
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image

start_grpc_service = grpc_util.start_grpc_service  # the fixture


def test_http_skips_a_dead_target_and_sticks_to_the_live_one(start_service) -> None:  # noqa: ANN001
    live = start_service()
    dead = f"http://127.0.0.1:{free_port()}"
    with connect([dead, live.url], timeout=10) as client:
        assert isinstance(client, FailoverClient)
        emb = client.embed(png_bytes(test_image()))
        assert client.failovers == 1
        res = client.segment(emb.image_id, points=[[10, 10]])
        assert res.masks and client.failovers == 1  # the live replica goes first now


def test_http_a_replica_stopped_between_calls(start_service) -> None:  # noqa: ANN001
    # No shared Redis: replica B has never seen the image, so the client re-embeds it there.
    a, b = start_service(), start_service()
    image = png_bytes(test_image(seed=3))
    with connect(f"{a.url},{b.url}", timeout=10) as client:
        emb = client.embed(image)
        first = client.segment(emb.image_id, points=[[20, 30]], labels=[1])
        a.server.stop()
        again = client.segment(emb.image_id, points=[[20, 30]], labels=[1])
        assert client.failovers >= 1
        assert again.best.array.tolist() == first.best.array.tolist()
        with client.session(emb.image_id) as session:  # emulated: unary calls to b
            assert session.click(20, 30).masks


def test_grpc_skips_a_dead_target_and_sessions_open_on_the_live_one(
    start_grpc_service,  # noqa: ANN001
) -> None:
    live = start_grpc_service()
    dead = f"grpc://127.0.0.1:{free_port()}"
    with connect([dead, f"grpc://{live.target}"], timeout=10) as client:
        emb = client.embed(png_bytes(test_image(seed=5)))
        assert client.failovers == 1
        assert client.segment(emb.image_id, points=[[5, 5]]).masks
        client.rotation.current = 0  # make the session try the dead replica first
        client.rotation.answered(0)
        with client.session(emb.image_id) as session:
            assert session.click(5, 5).masks
        assert client.failovers == 2


def test_async_http_fails_over(start_service) -> None:  # noqa: ANN001
    live = start_service()
    dead = f"http://127.0.0.1:{free_port()}"

    async def run() -> int:
        client = connect_async([dead, live.url], timeout=10)
        assert isinstance(client, AsyncFailoverClient)
        try:
            emb = await client.embed(png_bytes(test_image(seed=7)))
            assert (await client.segment(emb.image_id, points=[[1, 1]])).masks
            return client.failovers
        finally:
            await client.close()

    assert asyncio.run(run()) == 1
