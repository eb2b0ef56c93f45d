"""Images by URL (`{"url": ...}` to POST /v1/embed, `url` in gRPC's EmbedRequest): off by
default, allow-listed hosts only, private/loopback addresses only where listed, redirects
checked, size and time limits. Local HTTP servers on 127.0.0.1 stand in for image hosts."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from edgesam_client.grpc_stubs import segmentation_pb2 as pb
from service import codecs, url_fetch
from service.url_fetch import Allowlist
from tests.integration import grpc_util
from tests.integration.conftest import png_bytes, test_image

start_grpc_service = grpc_util.start_grpc_service  # the fixture

IMAGE = png_bytes(test_image(40, 60, seed=7))


class ImageHost(BaseHTTPRequestHandler):
    other_port = 0  # set per server: the port of a second server, for redirects

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path
        if path == "/image.png":
            self._send(200, IMAGE, "text/plain")  # a wrong type: the bytes are sniffed
        elif path.startswith("/redirect-to/"):
            self.send_response(302)
            self.send_header("Location", path[len("/redirect-to/") :])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/big-declared":
            self._send(200, b"\0" * 5000, "image/png")
        elif path == "/big-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"1f4\r\n" + b"\0" * 500 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/slow":
            time.sleep(3)
            self._send(200, IMAGE, "image/png")
        else:
            self._send(404, b"no", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def image_host() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), ImageHost)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def start(start_grpc_service, allow: list[str], **kw: object):  # type: ignore[no-untyped-def]
    settings: dict[str, object] = {"url_timeout_seconds": 1.5, "url_max_bytes": 3000, **kw}
    return start_grpc_service(url_allowlist=allow, **settings)


def embed_url(both, url: str):  # type: ignore[no-untyped-def]
    return both.http.post("/v1/embed", json={"url": url})


def test_off_by_default(start_grpc_service, image_host: str) -> None:  # type: ignore[no-untyped-def]
    both = start_grpc_service()
    res = embed_url(both, f"http://{image_host}/image.png")
    assert res.status_code == 501 and res.json()["code"] == "unavailable_feature", res.text
    with pytest.raises(grpc.RpcError) as info:
        both.stub.Embed(pb.EmbedRequest(url=f"http://{image_host}/image.png"), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_listed_loopback_address_is_fetched(start_grpc_service, image_host: str) -> None:  # type: ignore[no-untyped-def]
    both = start(start_grpc_service, ["127.0.0.1"], url_max_bytes=len(IMAGE) + 10)
    res = embed_url(both, f"http://{image_host}/image.png")
    assert res.status_code == 200, res.text
    assert res.json()["image_id"] == codecs.content_hash(IMAGE)
    assert res.json()["width"] == 60
    # redirects within the allow-list are followed; a second fetch is a cache hit
    res = embed_url(both, f"http://{image_host}/redirect-to/http://{image_host}/image.png")
    assert res.status_code == 200 and res.json()["cached"], res.text
    got = both.stub.Embed(pb.EmbedRequest(url=f"http://{image_host}/image.png"), timeout=10)
    assert got.image_id == codecs.content_hash(IMAGE) and got.cached
    with pytest.raises(grpc.RpcError) as info:
        both.stub.Embed(
            pb.EmbedRequest(url=f"http://{image_host}/image.png", image=IMAGE), timeout=10
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("allow", "path", "status", "code"),
    [
        # the host is not listed
        (["images.example.com"], "/image.png", 403, "url_not_allowed"),
        # redirect to a host not listed (localhost is not 127.0.0.1 in the list)
        (["127.0.0.1"], "/redirect-to/http://localhost:{port}/image.png", 403, "url_not_allowed"),
        # redirect to another scheme
        (["127.0.0.1"], "/redirect-to/file:///etc/passwd", 403, "url_not_allowed"),
        (["127.0.0.1"], "/loop", 502, "url_fetch_failed"),  # too many redirects
        (["127.0.0.1"], "/missing", 502, "url_fetch_failed"),  # 404
        (["127.0.0.1"], "/slow", 502, "url_fetch_failed"),  # past the time limit
        (["127.0.0.1"], "/big-declared", 413, "payload_too_large"),  # Content-Length
        (["127.0.0.1"], "/big-chunked", 413, "payload_too_large"),  # streamed past the limit
    ],
)
def test_refusals(
    start_grpc_service, image_host: str, allow: list[str], path: str, status: int, code: str
) -> None:  # type: ignore[no-untyped-def]
    both = start(start_grpc_service, allow)
    port = image_host.split(":")[1]
    began = time.monotonic()
    res = embed_url(both, f"http://{image_host}" + path.format(port=port))
    assert time.monotonic() - began < 10
    assert res.status_code == status, res.text
    assert res.json()["code"] == code
    assert "Traceback" not in res.text


def test_listed_host_name_resolving_to_loopback_is_refused(
    start_grpc_service, image_host: str
) -> None:  # type: ignore[no-untyped-def]
    """`localhost` is listed as a host, but its address (loopback) is not listed."""
    both = start(start_grpc_service, ["localhost"])
    port = image_host.split(":")[1]
    res = embed_url(both, f"http://localhost:{port}/image.png")
    assert res.status_code == 403 and res.json()["code"] == "url_not_allowed", res.text
    assert "loopback" in res.json()["message"] or "private" in res.json()["message"]
    # listing the address too lets it through
    both = start(start_grpc_service, ["localhost", "127.0.0.0/8"], url_max_bytes=10_000)
    assert embed_url(both, f"http://localhost:{port}/image.png").status_code == 200


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x.png",
        "file:///etc/passwd",
        "http://user:pw@127.0.0.1/x.png",
        "http:///nohost",
        "http://127.0.0.1:99999/x.png",
        "gopher://127.0.0.1/",
    ],
)
def test_bad_urls_are_refused(start_grpc_service, url: str) -> None:  # type: ignore[no-untyped-def]
    both = start(start_grpc_service, ["127.0.0.1"])
    res = embed_url(both, url)
    assert res.status_code == 403 and res.json()["code"] == "url_not_allowed", res.text


def test_url_body_is_strict(start_grpc_service) -> None:  # type: ignore[no-untyped-def]
    both = start(start_grpc_service, ["127.0.0.1"])
    for body in ({"url": 5}, {"url": "http://x", "extra": 1}, {}, []):
        res = both.http.post("/v1/embed", json=body)
        assert res.status_code == 422 and res.json()["code"] == "invalid_request", res.text


# -- the address policy on its own (no network) ---------------------------------------------
@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "224.0.0.1",
    ],
)
def test_non_global_addresses_are_refused_unless_listed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not Allowlist(["example.com"]).address_allowed(ip)
    net = "::/0" if ip.version == 6 else "0.0.0.0/0"
    mapped = ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else None
    listed = Allowlist(["example.com", net, "0.0.0.0/0" if mapped else net])
    assert listed.address_allowed(ip)


def test_global_addresses_pass_and_hosts_match_exactly() -> None:
    allow = Allowlist(["images.example.com", "*.cdn.example.org", "203.0.113.0/24"])
    assert allow.address_allowed(ipaddress.ip_address("8.8.8.8"))
    assert allow.host_allowed("images.example.com") and allow.host_allowed("IMAGES.example.com.")
    assert allow.host_allowed("a.cdn.example.org") and not allow.host_allowed("cdn.example.org")
    assert not allow.host_allowed("images.example.com.evil.net")
    assert not allow.host_allowed("example.com")
    assert allow.host_allowed("203.0.113.9") and not allow.host_allowed("203.0.114.9")


def test_the_checked_address_is_the_one_connected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host whose DNS answer includes a private address is refused before any connection
    (DNS rebinding): the backend connects only to addresses it has checked."""
    import asyncio

    connected: list[str] = []

    async def resolve(host: str, port: int, timeout: float | None) -> list:
        return [ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("10.0.0.5")]

    class Inner:
        async def connect_tcp(self, host: str, port: int, **kwargs: object) -> None:
            connected.append(host)
            raise AssertionError("must not connect")

    monkeypatch.setattr(url_fetch, "_resolve", resolve)
    backend = url_fetch._CheckedBackend(Allowlist(["images.example.com"]))
    backend.inner = Inner()  # type: ignore[assignment]
    with pytest.raises(url_fetch.UrlNotAllowed):
        asyncio.run(backend.connect_tcp("images.example.com", 80, timeout=1))
    assert connected == []
