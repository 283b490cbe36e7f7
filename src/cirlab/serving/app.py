"""The HTTP API and the web page: composed search over one index, gallery images by id, health, OpenAPI.

The model and the index are loaded once (a `Retriever`); every search runs on one worker thread that batches
the queries waiting for it (`SearchBatcher`), and image decoding runs in the thread pool, so the event loop
never blocks. Untrusted input is bounded everywhere: request bytes, image pixels, text length, k, and ids,
which are looked up in the index and never turned into paths. Every error is a JSON body `{"error": "..."}`.
(No `from __future__ import annotations` here: FastAPI reads the route annotations, which use the app's limits.)
"""

import asyncio
import io
import mimetypes
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps, UnidentifiedImageError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cirlab import __version__
from cirlab.index import Hit, Retriever, is_valid_id
from cirlab.index import Query as SearchQuery

STATIC_DIR = Path(str(resources.files("cirlab.serving") / "static"))
#: Decoders an upload may use: the common web formats only (a smaller attack surface than all of PIL's).
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": ("default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
                                "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"),
}


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input; `/api/health` reports them so a client can check before sending."""

    max_upload_bytes: int = 8 * 2**20
    max_pixels: int = 4096 * 4096
    max_text_chars: int = 300
    max_k: int = 100
    max_batch: int = 32
    thumb_side: int = 160
    gallery_page: int = 200


class SearchBatcher:
    """One worker thread runs the model; queries that arrive while it is busy are searched as one batch."""

    def __init__(self, retriever: Retriever, max_batch: int) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self._queue: queue.Queue[tuple[SearchQuery, int, Future]] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="cirlab-search", daemon=True)
        self._thread.start()
        self.batches = 0
        self.queries = 0

    async def search(self, query: SearchQuery, k: int) -> list[Hit]:
        future: Future = Future()
        self._queue.put((query, k, future))
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        while True:
            jobs = [self._queue.get()]
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                ranked = self.retriever.search([q for q, _, _ in jobs], max(k for _, k, _ in jobs))
            except Exception as exc:  # a model failure fails this batch, not the worker
                for _, _, future in jobs:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.queries += len(jobs)
            for (_, k, future), hits in zip(jobs, ranked, strict=True):
                future.set_result(hits[:k])


class GuardMiddleware:
    """Rejects requests for other hosts (DNS rebinding) and bodies over `max_body` bytes, with JSON errors."""

    def __init__(self, app: ASGIApp, max_body: int, allowed_hosts: set[str] | None) -> None:
        self.app = app
        self.max_body = max_body
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.allowed_hosts is not None and _hostname(headers.get("host", "")) not in self.allowed_hosts:
            await _send_json(send, 400, "the Host header names a host this server does not answer for")
            return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, f"request body of {length} bytes is over the limit of {self.max_body}")
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise HTTPException(413, f"request body is over the limit of {self.max_body} bytes")
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {k.lower() for k, _ in message.get("headers", [])}
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *((k.encode(), v.encode()) for k, v in
                                                              SECURITY_HEADERS.items() if k.encode() not in present)]
            await send(message)

        await self.app(scope, limited_receive, send_with_headers)


def _hostname(host: str) -> str:
    """'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _send_json(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def decode_upload(data: bytes, limits: Limits) -> Image.Image:
    """An uploaded image as RGB, refusing non-images, exotic formats and too many pixels before decoding them."""
    if not data:
        raise HTTPException(400, "image: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image: {len(data)} bytes is over the limit of {limits.max_upload_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            width, height = img.size
            if width * height > limits.max_pixels:
                raise HTTPException(413, f"image: {width} x {height} pixels is over the limit of "
                                         f"{limits.max_pixels} pixels")
            img.load()
            return (ImageOps.exif_transpose(img) or img).convert("RGB")  # phone photos: apply EXIF rotation
    except UnidentifiedImageError:
        raise HTTPException(400, f"image: not a decodable image (accepted: {', '.join(UPLOAD_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise HTTPException(400, f"image: corrupt or truncated image ({exc})") from None


class ThumbnailCache:
    """PNG thumbnails of gallery images, made on first request and kept (bounded LRU)."""

    def __init__(self, side: int, capacity: int = 4096) -> None:
        self.side = side
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item_id: str, path: str) -> bytes:
        with self._lock:
            if item_id in self._items:
                self._items.move_to_end(item_id)
                return self._items[item_id]
        with Image.open(path) as img:
            img.thumbnail((self.side, self.side))
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
        with self._lock:
            self._items[item_id] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return data


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {"rank": hit.rank, "id": hit.id, "score": round(hit.score, 6),
            "image": f"/api/images/{hit.id}", "thumb": f"/api/images/{hit.id}?thumb=true"}


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        loc = [str(x) for x in error.get("loc", ()) if x not in ("body", "query", "path")]
        parts.append(f"{'.'.join(loc) or 'request'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(retriever: Retriever, limits: Limits | None = None, allowed_hosts: set[str] | None = None
               ) -> FastAPI:
    """The app over a loaded `Retriever`; `allowed_hosts` (None: any) guards against DNS rebinding."""
    limits = limits or Limits()
    index = retriever.index
    batcher = SearchBatcher(retriever, limits.max_batch)
    thumbs = ThumbnailCache(limits.thumb_side)
    app = FastAPI(title="cirlab", version=__version__, docs_url=None, redoc_url=None,
                  description="Composed image retrieval: a reference image plus a text describing a change.")
    app.state.retriever = retriever
    app.state.batcher = batcher
    app.add_middleware(GuardMiddleware, max_body=limits.max_upload_bytes + 64 * 1024, allowed_hosts=allowed_hosts)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": _validation_message(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.get("/api/health", summary="Liveness, the index and the input limits")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "images": len(index), "kind": index.kind,
                "model": index.meta["run"].get("model"), "dataset": index.meta["run"].get("dataset"),
                "dim": index.meta["dim"], "limits": asdict(limits),
                "served": {"searches": batcher.queries, "batches": batcher.batches}}

    @app.get("/api/gallery", summary="A page of gallery ids (for browsing)")
    async def gallery(offset: Annotated[int, Query(ge=0)] = 0,
                      limit: Annotated[int, Query(ge=1, le=limits.gallery_page)] = 48) -> dict[str, Any]:
        items = index.items[offset:offset + limit]
        return {"total": len(index), "offset": offset,
                "items": [{"id": it.id, "image": f"/api/images/{it.id}", "thumb": f"/api/images/{it.id}?thumb=true"}
                          for it in items]}

    @app.post("/api/search", summary="Rank the gallery for a reference (gallery id or upload) and a text")
    async def search(text: Annotated[str, Form(max_length=limits.max_text_chars, description="the change")] = "",
                     k: Annotated[int, Form(ge=1, le=limits.max_k)] = 10,
                     id: Annotated[str | None, Form(max_length=128, description="reference gallery id")] = None,
                     image: Annotated[UploadFile | None, File(description="reference image upload")] = None,
                     ) -> dict[str, Any]:
        started = time.perf_counter()
        text = text.strip()
        if not text:
            raise HTTPException(422, "text: describe the change (it is empty)")
        has_upload = image is not None and bool(image.filename or image.size)
        if (id is None) == (not has_upload):
            raise HTTPException(422, "give exactly one reference: id (a gallery image) or image (an upload)")
        if id is not None:
            if not is_valid_id(id):
                raise HTTPException(422, "id: gallery ids are letters, digits, '.', '_' and '-'")
            if index.position(id) is None:
                raise HTTPException(404, f"id: no gallery image has id {id!r}")
            query = await run_in_threadpool(_gallery_query, retriever, id, text)
            reference: dict[str, Any] = {"id": id}
        else:
            data = await image.read(limits.max_upload_bytes + 1)
            pil = await run_in_threadpool(decode_upload, data, limits)
            query = SearchQuery(pil, text)
            reference = {"upload": {"width": pil.width, "height": pil.height}}
        hits = await batcher.search(query, k)
        return {"query": {"reference": reference, "text": text, "k": k}, "results": [_hit_json(h) for h in hits],
                "took_ms": round((time.perf_counter() - started) * 1000, 2)}

    @app.get("/api/images/{item_id}", summary="A gallery image (or its thumbnail) by id",
             responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
    async def gallery_image(item_id: str, thumb: bool = False) -> Response:
        pos = index.position(item_id)
        if pos is None:
            raise HTTPException(404, "no gallery image has this id")
        item = index.items[pos]
        if not Path(item.path).is_file():
            raise HTTPException(404, f"the file of gallery image {item_id!r} is missing on the server")
        cache = {"cache-control": "public, max-age=3600"}
        if thumb:
            try:
                data = await run_in_threadpool(thumbs.get, item.id, item.path)
            except (OSError, SyntaxError, ValueError) as exc:
                raise HTTPException(404, f"gallery image {item_id!r} cannot be read ({exc})") from None
            return Response(data, media_type="image/png", headers=cache)
        media = mimetypes.guess_type(item.path)[0] or "application/octet-stream"
        return FileResponse(item.path, media_type=media, headers=cache)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _gallery_query(retriever: Retriever, item_id: str, text: str) -> SearchQuery:
    try:
        return retriever.query_for_id(item_id, text)
    except Exception as exc:  # the file behind a valid id went missing or is corrupt: the server's problem
        raise HTTPException(404, f"the image of gallery id {item_id!r} cannot be read on the server") from exc

