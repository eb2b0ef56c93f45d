"""`python -m service`'s process life cycle over gRPC: both transports in one process, and on
SIGTERM health goes NOT_SERVING while requests are still answered, then the process ends."""

import signal
import time

import grpc
import httpx
from grpc_health.v1 import health_pb2

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from edgesam_client.grpc_stubs import segmentation_pb2_grpc as pb_grpc
from tests.conftest import wait_until
from tests.integration import process_util
from tests.integration.conftest import png_bytes, test_image

service_processes = process_util.service_processes  # the fixture


def test_sigterm_drains_with_health_not_serving(service_processes) -> None:  # noqa: ANN001
    proc = service_processes(EDGESAM_DRAIN_SECONDS="3")
    proc.wait_serving()
    with grpc.insecure_channel(proc.target) as channel:
        stub = pb_grpc.SegmentationStub(channel)
        image_id = stub.Embed(pb.EmbedRequest(image=png_bytes(test_image())), timeout=10).image_id
        assert proc.health(channel) == health_pb2.HealthCheckResponse.SERVING
        proc.proc.send_signal(signal.SIGTERM)
        assert wait_until(
            lambda: proc.health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 2
        ), proc.log()
        # draining: not ready, but still answering on both transports
        assert httpx.get(f"{proc.url}/readyz", timeout=2).status_code == 503
        answer = stub.Segment(
            pb.SegmentRequest(image_id=image_id, box=pb.Box(x0=1, y0=1, x1=50, y1=50)), timeout=5
        )
        assert answer.masks
        begin = time.monotonic()
        assert proc.proc.wait(20) == 0, proc.log()
        assert time.monotonic() - begin < 15
