"""Images by URL for POST /v1/embed (`{"url": ...}`), allow-listed against SSRF.

Off while EDGESAM_URL_ALLOWLIST is empty. A URL is fetched only when:
- its scheme is http or https and its host matches an allow-list entry (a host name, a
  `*.suffix` wildcard, or an IP address / network for a literal address);
- every address the host resolves to that is not globally routable (private, loopback,
  link-local, reserved, ...) lies in an address entry of the allow-list; the connection goes
  to an address checked this way (resolved once, then connected to by number, so a second DNS
  answer cannot swap it) and the peer address of the open socket is checked again;
- each redirect (at most EDGESAM_URL_MAX_REDIRECTS) passes the same checks;
- the body stays within EDGESAM_URL_MAX_BYTES, and the whole fetch, redirects included,
  within EDGESAM_URL_TIMEOUT_SECONDS.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Iterable, Sequence, Union
from urllib.parse import urljoin, urlsplit

import httpcore

from service.errors import FeatureUnavailable, PayloadTooLarge, UrlFetchFailed, UrlNotAllowed

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
REDIRECTS = {301, 302, 303, 307, 308}


class Allowlist:
    """EDGESAM_URL_ALLOWLIST parsed: host names, `*.suffix` wildcards, addresses/networks."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])  # ".example.com"
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.hosts.add(entry)

    def __bool__(self) -> bool:
        return bool(self.hosts or self.suffixes or self.networks)

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        address = _literal(host)
        if address is not None:
            return self.address_listed(address)
        return host in self.hosts or any(host.endswith(s) for s in self.suffixes)

    def address_listed(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks)

    def address_allowed(self, address: IPAddress) -> bool:
        """Globally routable addresses pass; any other only where listed."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return (address.is_global and not address.is_multicast) or self.address_listed(address)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class _CheckedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host once, refuses addresses the allow-list does not let through,
    connects to a checked address by number and checks the socket's peer again."""

    def __init__(self, allowlist: Allowlist) -> None:
        self.allowlist = allowlist
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[object] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await _resolve(host, port, timeout)
        refused = [a for a in addresses if not self.allowlist.address_allowed(a)]
        if refused:
            raise UrlNotAllowed(
                f"the host {host!r} resolves to {refused[0]}, a private, loopback or reserved "
                "address not in EDGESAM_URL_ALLOWLIST"
            )
        stream = await self.inner.connect_tcp(
            str(addresses[0]), port, timeout=timeout, local_address=local_address
        )
        peer = stream.get_extra_info("server_addr")
        if peer is not None and not self.allowlist.address_allowed(ipaddress.ip_address(peer[0])):
            await stream.aclose()
            raise UrlNotAllowed(f"the connection to {host!r} reached a refused address")
        return stream

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[object] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise UrlNotAllowed("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


async def _resolve(host: str, port: int, timeout: float | None) -> list[IPAddress]:
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except (OSError, asyncio.TimeoutError) as exc:
        raise UrlFetchFailed(f"the host {host!r} could not be resolved") from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UrlFetchFailed(f"the host {host!r} has no address")
    return found


def check_url(url: str, allowlist: Allowlist) -> str:
    """The host of an allowed http(s) URL, or UrlNotAllowed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        _ = parts.port  # raises ValueError on a bad port
    except ValueError as exc:
        raise UrlNotAllowed("the url is not a valid http(s) URL") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise UrlNotAllowed("only http and https URLs with a host are fetched")
    if parts.username is not None or parts.password is not None:
        raise UrlNotAllowed("URLs with credentials are not fetched")
    if not allowlist.host_allowed(host):
        raise UrlNotAllowed(f"the host {host!r} is not in EDGESAM_URL_ALLOWLIST")
    return host


async def fetch_image(
    url: str,
    allowlist_entries: Sequence[str],
    max_bytes: int,
    timeout: float,
    max_redirects: int,
) -> tuple[bytes, str]:
    """(body, content type) of an allow-listed image URL, following checked redirects."""
    allowlist = Allowlist(allowlist_entries)
    if not allowlist:
        raise FeatureUnavailable(
            "images by URL are off: the server's EDGESAM_URL_ALLOWLIST is empty"
        )
    try:
        return await asyncio.wait_for(
            _fetch(url, allowlist, max_bytes, timeout, max_redirects), timeout
        )
    except asyncio.TimeoutError as exc:
        raise UrlFetchFailed(f"fetching the url took longer than {timeout:g} s") from exc


async def _fetch(
    url: str, allowlist: Allowlist, max_bytes: int, timeout: float, max_redirects: int
) -> tuple[bytes, str]:
    pool = httpcore.AsyncConnectionPool(
        network_backend=_CheckedBackend(allowlist), max_connections=2, retries=0
    )
    extensions = {
        "timeout": {"connect": timeout, "read": timeout, "write": timeout, "pool": timeout}
    }
    try:
        for _ in range(max_redirects + 1):
            check_url(url, allowlist)
            try:
                async with pool.stream(
                    "GET",
                    url,
                    headers=[(b"Accept", b"image/*"), (b"User-Agent", b"edgesam-serve")],
                    extensions=extensions,
                ) as response:
                    if response.status in REDIRECTS:
                        location = _header(response.headers, b"location")
                        if not location:
                            raise UrlFetchFailed("the url redirected with no Location")
                        url = urljoin(url, location)
                        continue
                    if not 200 <= response.status < 300:
                        raise UrlFetchFailed(f"the url answered HTTP {response.status}")
                    declared = _header(response.headers, b"content-length")
                    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                        raise PayloadTooLarge(
                            f"the image at the url has {declared} bytes; at most {max_bytes} "
                            "are accepted"
                        )
                    body = bytearray()
                    async for chunk in response.aiter_stream():
                        body.extend(chunk)
                        if len(body) > max_bytes:
                            raise PayloadTooLarge(f"the image at the url exceeds {max_bytes} bytes")
                    content_type = _header(response.headers, b"content-type") or ""
                    return bytes(body), content_type
            except httpcore.TimeoutException as exc:
                raise UrlFetchFailed("fetching the url timed out") from exc
            except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
                raise UrlFetchFailed(f"the url could not be fetched: {type(exc).__name__}") from exc
            except httpcore.UnsupportedProtocol as exc:
                raise UrlNotAllowed("only http and https URLs are fetched") from exc
        raise UrlFetchFailed(f"the url redirected more than {max_redirects} times")
    finally:
        await pool.aclose()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None
