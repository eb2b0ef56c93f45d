"""The HTTP transport (httpx): HttpClient and AsyncHttpClient."""

from __future__ import annotations

from typing import Any

import httpx

from edgesam_client._base import AsyncClient, SyncClient
from edgesam_client._common import ImageMemory, RetryPolicy
from edgesam_client.errors import EdgeSamError, Unavailable, make_error
from edgesam_client.results import (
    EmbedResult,
    EverythingResult,
    SegmentResult,
    embed_from_json,
    everything_from_json,
    segment_from_json,
)

DEFAULT_TIMEOUT_S = 60.0


def _headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    code, message = f"http_{response.status_code}", response.reason_phrase
    try:
        body = response.json()
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        pass
    retry = response.headers.get("retry-after")
    try:
        retry_after = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    raise make_error(code, message, response.status_code, retry_after)


def _error(exc: httpx.HTTPError) -> EdgeSamError:
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        # No connection, so nothing was sent: safe to send anywhere else.
        return Unavailable("unavailable", f"the server is unreachable: {exc}", sent=False)
    if isinstance(exc, httpx.TimeoutException):
        return EdgeSamError("deadline_exceeded", f"the server did not answer in time: {exc}")
    return Unavailable("unavailable", f"the connection to the server failed: {exc}")


class HttpClient(SyncClient):
    """Blocking client of the HTTP API at `base_url` (e.g. http://localhost:8000)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(retry, memory)
        self.http = http or httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=_headers(api_key)
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _error(exc) from exc

    def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        response = self._request(
            "POST", "/v1/embed", content=data, headers={"content-type": content_type}
        )
        return embed_from_json(_check(response).json())

    def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        return segment_from_json(_check(self._request("POST", "/v1/segment", json=fields)).json())

    def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        response = self._request("POST", "/v1/everything", json=fields)
        return everything_from_json(_check(response).json())

    def _has_raw(self, image_id: str) -> bool:
        response = self._request("HEAD", f"/v1/embeddings/{image_id}")
        if response.status_code == 404:
            return False
        _check(response)
        return True

    def _delete_raw(self, image_id: str) -> bool:
        response = self._request("DELETE", f"/v1/embeddings/{image_id}")
        if response.status_code == 404:
            return False
        _check(response)
        return True

    def close(self) -> None:
        self.http.close()


class AsyncHttpClient(AsyncClient):
    """Awaitable client of the HTTP API."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        memory: ImageMemory | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(retry, memory)
        self.http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"), timeout=timeout, headers=_headers(api_key)
        )

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _error(exc) from exc

    async def _embed_raw(self, data: bytes, content_type: str) -> EmbedResult:
        response = await self._request(
            "POST", "/v1/embed", content=data, headers={"content-type": content_type}
        )
        return embed_from_json(_check(response).json())

    async def _segment_raw(self, fields: dict[str, Any]) -> SegmentResult:
        response = await self._request("POST", "/v1/segment", json=fields)
        return segment_from_json(_check(response).json())

    async def _everything_raw(self, fields: dict[str, Any]) -> EverythingResult:
        response = await self._request("POST", "/v1/everything", json=fields)
        return everything_from_json(_check(response).json())

    async def _has_raw(self, image_id: str) -> bool:
        response = await self._request("HEAD", f"/v1/embeddings/{image_id}")
        if response.status_code == 404:
            return False
        _check(response)
        return True

    async def _delete_raw(self, image_id: str) -> bool:
        response = await self._request("DELETE", f"/v1/embeddings/{image_id}")
        if response.status_code == 404:
            return False
        _check(response)
        return True

    async def close(self) -> None:
        await self.http.aclose()
