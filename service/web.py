"""The interactive web page: static files in service/static/, served at / and /static/.

The page talks only to the public HTTP API (relative URLs, so it also works behind a path
prefix); nothing here knows about the engine or the cache.
"""

import mimetypes
from pathlib import Path
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import Scope

STATIC_DIR = Path(__file__).resolve().parent / "static"
# onnxruntime-web, pinned in service/webdeps/package-lock.json and installed there with
# `npm ci` (.ci/run, the Dockerfile): served at /static/ort/ so the page needs no CDN. Without
# it the page decodes on the server only.
ORT_WEB_DIR = STATIC_DIR.parent / "webdeps" / "node_modules" / "onnxruntime-web" / "dist"
# Module scripts must come as JavaScript, WebAssembly as application/wasm (streaming compile);
# older mimetypes tables know neither.
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")
# The page is plain files; a short cache keeps reloads fast without pinning old versions.
CACHE_CONTROL = "no-cache"


def mount_web(app: FastAPI, ort_dir: Optional[Path] = None) -> None:
    """Serve GET / (index.html) and GET /static/* from service/static/, and onnxruntime-web
    at /static/ort/ from `ort_dir` (default ORT_WEB_DIR) when it is there."""
    index = STATIC_DIR / "index.html"

    @app.get("/", include_in_schema=False)
    async def web_index() -> FileResponse:
        return FileResponse(index, media_type="text/html", headers={"Cache-Control": CACHE_CONTROL})

    ort = ort_dir or ORT_WEB_DIR
    if ort.is_dir():  # mounted first: /static would answer its 404 otherwise
        app.mount("/static/ort", _Static(directory=ort), name="static-ort")
    app.mount("/static", _Static(directory=STATIC_DIR), name="static")


class _Static(StaticFiles):
    """StaticFiles with revalidation on every load (ETag / Last-Modified still apply)."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        # A 405 must carry Allow (RFC 9110). Older Starlette's StaticFiles sends none: the
        # releases installed on Python 3.8 and 3.9 (0.44, 0.49) among them.
        if scope["method"] not in ("GET", "HEAD"):
            raise HTTPException(status_code=405, headers={"Allow": "GET, HEAD"})
        return await super().get_response(path, scope)

    def file_response(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = CACHE_CONTROL
        return response
