"""The HTTP API and the web page: composed search over one index, gallery images by id, health, OpenAPI.

The model and the index are loaded once (a `Retriever`); every search runs on one worker thread that batches
the queries waiting for it (`SearchBatcher`), and image decoding runs in the thread pool, so the event loop
never blocks. Untrusted input is bounded everywhere: request bytes and read time, the Host and Origin headers,
image pixels and concurrent decodes, text length, k, and ids, which are looked up in the index and never
turned into paths. Every error is a JSON body `{"error": "..."}` (documented in the OpenAPI document); server
paths only ever go to the server log. The handlers are module-level functions; `create_app` wires them and
keeps what they share in `app.state.serving` (a `ServingState`, reached through the `serving_state` dependency).
Bounds that come from the app's `Limits` are checked in the handlers and written into the OpenAPI document by
`CirlabApp.openapi`.
"""

import asyncio
import io
import ipaddress
import logging
import mimetypes
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field, WithJsonSchema
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cirlab import __version__
from cirlab.index import ComposedQuery, Hit, Retriever, is_valid_id
from cirlab.index.gallery import ID_PATTERN
from cirlab.index.store import index_stamp
from cirlab.utils.errors import CirlabError

log = logging.getLogger("cirlab.serving")

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
#: What `text` may not consist of only. ASCII whitespace, spelt out, so that the OpenAPI pattern (ECMA and
#: Rust regex engines) and the handler (`str.strip`) agree on every character.
TEXT_SPACE = " \t\n\r\f\v"
TEXT_PATTERN = r"[^ \t\n\r\f\v]"
#: The fields of POST /api/search; each may be sent once.
SEARCH_FIELDS = ("text", "k", "id", "image")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the picture upright (values 5-8 swap width and height).
ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                         4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                         6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass(frozen=True)
class Limits:
    """Bounds on untrusted input; `/api/health` reports them so a client can check before sending."""

    max_upload_bytes: int = 8 * 2**20
    #: Pixels an upload may decode to: its declared size, or for a JPEG the size at the 1/2, 1/4 or 1/8
    #: decoding scale that still covers the model's input. The models look at 224 x 224 (CSS runs: 64 x 64),
    #: so 2048 x 2048 (4.2 MP) is ample for a picture and bounds one decode to about 16 MB.
    max_pixels: int = 2048 * 2048
    max_text_chars: int = 300
    max_k: int = 100
    max_batch: int = 32
    #: Uploads decoded at the same time; another waits up to `decode_wait_s`, then gets 503.
    max_decodes: int = 2
    decode_wait_s: float = 2.0
    #: Seconds a client may take to send its request head, and to send each next piece of its body.
    read_timeout_s: float = 10.0
    thumb_side: int = 160
    gallery_page: int = 200


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="one line naming the field or the problem")


ERROR_DESCRIPTIONS = {
    400: "Malformed request: a bad Host header, a form field sent twice, an upload that is not a usable image",
    403: "A state-changing request from a page of another site (Origin or Sec-Fetch-Site)",
    404: "No gallery image has this id, or its file cannot be read on the server",
    408: "The request body stalled for longer than the read timeout",
    413: "Request body, upload bytes or image pixels over the limits in /api/health",
    422: "A field is missing, empty or out of range",
    503: "Every upload decoder is busy: retry after the Retry-After header's seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses, all with the `ErrorBody` schema."""
    return {code: {"model": ErrorBody, "description": ERROR_DESCRIPTIONS[code]} for code in codes}


class RepeatedLogFilter(logging.Filter):
    """Lets through the first `burst` records of each message per `window_s` seconds; the first one after a
    window in which some were dropped says how many, so a flood of bad requests is a few lines, not thousands.
    """

    def __init__(self, burst: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._seen: OrderedDict[tuple[str, str], list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            start, count, dropped = self._seen.pop(key, (now, 0, 0))
            if now - start >= self.window_s:
                if dropped:
                    record.msg = f"{record.msg} ({int(dropped)} more like it in the last {now - start:.0f} s " \
                                 f"were not logged)"
                start, count, dropped = now, 0, 0
            passes = count < self.burst
            self._seen[key] = [start, count + passes, dropped + (not passes)]
            while len(self._seen) > 1000:
                self._seen.popitem(last=False)
        return passes


class DecodeSlots:
    """At most `count` upload decodes at a time; a caller waits up to `wait_s` for a slot. (Polling a thread
    semaphore: it works from any event loop and never blocks one.)"""

    def __init__(self, count: int, wait_s: float) -> None:
        self._free = threading.BoundedSemaphore(count)
        self.wait_s = wait_s

    async def acquire(self) -> bool:
        deadline = time.monotonic() + self.wait_s
        while not self._free.acquire(blocking=False):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def release(self) -> None:
        self._free.release()


class SearchBatcher:
    """One worker thread runs the model; queries that arrive while it is busy are searched as one batch.

    Each query keeps its own k (the index searches it as if alone), a request whose client left is skipped,
    and between batches (at most every `reload_check_s` seconds; None: never) the worker re-opens the index if
    `cirlab index` rewrote its directory.
    """

    def __init__(self, retriever: Retriever, max_batch: int, reload_check_s: float | None = 2.0) -> None:
        self.retriever = retriever
        self.max_batch = max_batch
        self.reload_check_s = reload_check_s
        self._queue: queue.Queue[tuple[ComposedQuery, int, Future]] = queue.Queue()
        self.batches = 0
        self.queries = 0
        self.reloads = 0
        self._next_check = 0.0
        self._refused_stamp: tuple[int, ...] | None = None
        self._thread = threading.Thread(target=self._work, name="cirlab-search", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Queries waiting for the worker."""
        return self._queue.qsize()

    async def search(self, query: ComposedQuery, k: int) -> list[Hit]:
        future: Future = Future()
        self._queue.put((query, k, future))
        return await asyncio.wrap_future(future)

    def _work(self) -> None:
        idle_wake = self.reload_check_s or None
        while True:
            try:
                jobs = [self._queue.get(timeout=idle_wake)]
            except queue.Empty:
                self._maybe_reload()
                continue
            while len(jobs) < self.max_batch:
                try:
                    jobs.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._maybe_reload()
            jobs = [job for job in jobs if job[2].set_running_or_notify_cancel()]  # drop requests whose client left
            if not jobs:
                continue
            try:
                ranked = self.retriever.search([q for q, _, _ in jobs], [k for _, k, _ in jobs])
            except Exception as exc:  # a model failure fails this batch, not the worker
                for _, _, future in jobs:
                    future.set_exception(exc)
                continue
            self.batches += 1
            self.queries += len(jobs)
            for (_, _, future), hits in zip(jobs, ranked, strict=True):
                future.set_result(hits)

    def _maybe_reload(self) -> None:
        if self.reload_check_s is None or time.monotonic() < self._next_check:
            return
        self._next_check = time.monotonic() + self.reload_check_s
        directory = self.retriever.index.directory
        stamp = index_stamp(directory)
        if stamp is None or stamp == self._refused_stamp:
            return
        try:
            if self.retriever.refresh():
                self.reloads += 1
                log.warning("index %s changed on disk: now serving %d images", directory, len(self.retriever.index))
        except CirlabError as exc:
            self._refused_stamp = stamp
            log.warning("index %s changed on disk but was not reloaded (still serving the previous one): %s",
                        directory, exc)
        except Exception:  # never let a reload attempt stop the worker
            self._refused_stamp = stamp
            log.exception("reloading index %s failed", directory)


_HOST = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?))"
                   r"(?::(?P<port>[0-9]{1,5}))?")


def parse_host(value: str) -> tuple[str, int | None] | None:
    """A Host header as (lower-case host, port or None), or None unless it is exactly one host name, IPv4
    address or bracketed IPv6 address with an optional port ('localhost:8000@evil', 'a, b' are None)."""
    match = _HOST.fullmatch(value)
    if not match:
        return None
    if match["ip6"] is not None:
        try:
            host = str(ipaddress.IPv6Address(match["ip6"]))
        except ValueError:
            return None
    else:
        host = match["name"].lower()
    port = int(match["port"]) if match["port"] is not None else None
    if port is not None and not 0 < port < 65536:
        return None
    return host, port


def normalize_host_name(value: str) -> str | None:
    """An allowed-host entry ('Example.org', '::1', '[::1]') as `parse_host` reports it, or None if invalid."""
    try:
        return str(ipaddress.IPv6Address(value))
    except ValueError:
        parsed = parse_host(value)
        return parsed[0] if parsed is not None and parsed[1] is None else None


def _origin(value: str) -> tuple[str, str, int] | None:
    """An Origin header as (scheme, host, port), or None ('null', anything but http(s)://host[:port])."""
    match = re.fullmatch(r"(?P<scheme>[A-Za-z]+)://(?P<rest>[^/?#]+)", value)
    if not match or match["scheme"].lower() not in ("http", "https"):
        return None
    scheme = match["scheme"].lower()
    parsed = parse_host(match["rest"])
    if parsed is None:
        return None
    return scheme, parsed[0], parsed[1] or (443 if scheme == "https" else 80)


class GuardMiddleware:
    """Answers with a JSON error before the app sees a request: a malformed or foreign Host (DNS rebinding),
    a state-changing request from another site, a body over `max_body` bytes or one that stalls for
    `read_timeout_s`; adds the security headers to every response."""

    def __init__(self, app: ASGIApp, max_body: int, allowed_hosts: set[str] | None, read_timeout_s: float) -> None:
        self.app = app
        self.max_body = max_body
        self.allowed_hosts = None if allowed_hosts is None else {normalize_host_name(h) or h for h in allowed_hosts}
        self.read_timeout_s = read_timeout_s

    def _host_problem(self, values: list[str]) -> tuple[str | None, tuple[str, int | None] | None]:
        if len(values) > 1:
            return "the request has more than one Host header", None
        if not values:
            return (None if self.allowed_hosts is None else "the request has no Host header"), None
        host = parse_host(values[0])
        if host is None:
            return "the Host header is not one host name with an optional port", None
        if self.allowed_hosts is not None and host[0] not in self.allowed_hosts:
            return "the Host header names a host this server does not answer for", None
        return None, host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k.lower() == b"host"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problem, host = self._host_problem(hosts)
        if problem is not None:
            await _send_json(send, 400, problem)
            return
        if scope["method"] not in SAFE_METHODS:
            refusal = _cross_site(headers, scope.get("scheme", "http"), host)
            if refusal is not None:
                await _send_json(send, 403, refusal)
                return
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            await _send_json(send, 413, f"request body of {length} bytes is over the limit of {self.max_body}")
            return
        seen = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # later receives only wait for a disconnect while the response is sent
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout_s)
            except TimeoutError:
                raise HTTPException(408, f"request body: nothing received for {self.read_timeout_s:g} s "
                                         f"(read timeout)") from None
            seen += len(message.get("body", b""))
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
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

        await self.app(scope, guarded_receive, send_with_headers)


def _cross_site(headers: dict[str, str], scheme: str, host: tuple[str, int | None] | None) -> str | None:
    """Why a state-changing request must be refused as coming from another site, or None (same origin, or a
    client that is not a browser page: no Origin header)."""
    site = headers.get("sec-fetch-site")
    if site is not None and site.lower() not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site}): a page of another Origin may not search here"
    origin = headers.get("origin")
    if origin is None:
        return None
    here = None if host is None else (scheme, host[0], host[1] or (443 if scheme == "https" else 80))
    if here is None or _origin(origin) != here:
        return f"cross-site request refused: Origin {origin[:100]!r} is not this server"
    return None


async def _send_json(send: Send, status: int, message: str) -> None:
    response = JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(EXIF_ORIENTATION)
    except Exception:  # a malformed EXIF block only costs the rotation, not the upload
        return None
    return value if isinstance(value, int) else None


def shrink(img: Image.Image, side: int) -> Image.Image:
    """`img` as a new "RGB" or "L" image whose shorter side is at most `side` (0: any): box-reduced by an
    integer factor, then resampled, so no full-size copy is made beyond the decoded pixels."""
    grey = img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
    mode = "L" if grey else "RGB"
    out = img.convert(mode) if img.mode != mode else img
    width, height = out.size
    if side and min(width, height) > side:
        scale = side / min(width, height)
        size = (max(side, round(width * scale)), max(side, round(height * scale)))
        return out.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return out.copy() if out is img else out


def decode_upload(data: bytes, limits: Limits, side: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """An upload as a small RGB image (shorter side `side`, the model's input, when larger) and its size as
    shown (EXIF-oriented). Refuses non-images and exotic formats (400), and more than `limits.max_pixels`
    decoded pixels (413) before decoding: JPEGs decode at the smallest 1/2-1/4-1/8 scale that covers `side`."""
    if not data:
        raise HTTPException(400, "image: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise HTTPException(413, f"image: {len(data)} bytes is over the limit of {limits.max_upload_bytes}")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            width, height = img.size
            if side and img.format == "JPEG":
                img.draft(None, (side, side))
            if img.width * img.height > limits.max_pixels:
                decoded = f" ({img.width} x {img.height} at the smallest JPEG scale)" if img.size != (width, height) \
                    else ""
                raise HTTPException(413, f"image: {width} x {height} pixels{decoded} is over the limit of "
                                         f"{limits.max_pixels} pixels")
            img.load()
            orientation = _orientation(img)
            small = shrink(img, side)
    except Image.DecompressionBombError as exc:  # PIL's own, far higher limit: the header declares too much
        count = re.search(r"\((\d+) pixels\)", str(exc))
        raise HTTPException(413, f"image: {count.group(1) if count else 'its'} pixels is over the limit of "
                                 f"{limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise HTTPException(400, f"image: not a decodable image (accepted: {', '.join(UPLOAD_FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise HTTPException(400, f"image: corrupt or truncated image ({str(exc)[:200]})") from None
    transpose = ORIENTATION_TRANSPOSE.get(orientation)  # phone photos: show them upright
    if transpose is not None:
        small = small.transpose(transpose)
        if orientation >= 5:
            width, height = height, width
    return small.convert("RGB"), (width, height)


class ThumbnailCache:
    """PNG thumbnails of gallery images, made on first request and kept (bounded LRU, keyed by id and path)."""

    def __init__(self, side: int, capacity: int = 4096) -> None:
        self.side = side
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, item_id: str, path: str) -> bytes:
        key = (item_id, path)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        with Image.open(path) as img:
            img.draft(None, (self.side, self.side))
            img.thumbnail((self.side, self.side))
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, format="PNG")
        data = buffer.getvalue()
        with self._lock:
            self._items[key] = data
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
        field, kind = ".".join(loc), error.get("type", "")
        if field == "text" and kind in ("missing", "string_too_short", "string_pattern_mismatch"):
            message = "describe the change (it is empty)"
        elif field == "id" and kind == "string_pattern_mismatch":
            message = "gallery ids are letters, digits, '.', '_' and '-' (not starting with '.' or '-')"
        else:
            message = error.get("msg", "invalid")
        parts.append(f"{field or 'request'}: {message}")
    return "; ".join(parts) or "invalid request"


async def check_form_parts(request: Request) -> None:
    """The search form's parts as the OpenAPI schema states them, before FastAPI validates the values.

    400 when a field comes more than once (the validators would only see the last, so a first, invalid part
    would pass unnoticed); 422 for an empty `id` or `k` (FastAPI reads an empty part as absent), an `image`
    that is not a file, or both references at once, even an empty upload beside an id.
    """
    form = await request.form()  # already parsed (and cached) by FastAPI for the route's form fields
    for name in SEARCH_FIELDS:
        if len(form.getlist(name)) > 1:
            raise HTTPException(400, f"form field '{name}' was sent more than once (send each field once)")
    for name in ("id", "k"):
        if form.get(name) == "":
            raise HTTPException(422, f"{name}: the field is empty")
    if isinstance(form.get("image"), str):
        raise HTTPException(422, "image: send a file (multipart file part), not a text field")
    if "image" in form and "id" in form:
        raise HTTPException(422, "give exactly one reference: id (a gallery image) or image (an upload)")


@dataclass
class ServingState:
    """What the handlers share, kept on `app.state.serving`: the retriever, its batching worker, the input
    limits, the upload decode slots, the thumbnail cache and the model's input side (uploads are reduced to it)."""

    retriever: Retriever
    limits: Limits
    batcher: SearchBatcher
    decodes: DecodeSlots
    thumbs: ThumbnailCache
    upload_side: int


def serving_state(request: Request) -> ServingState:
    """The app's `ServingState` (a FastAPI dependency)."""
    return request.app.state.serving


Served = Annotated[ServingState, Depends(serving_state)]


def _over_limit(field: str, location: str, kind: str, message: str, value: Any) -> dict[str, Any]:
    """A validation error shaped like pydantic's, for a bound that depends on the app's `Limits`."""
    return {"type": kind, "loc": (location, field), "msg": message, "input": value}


def check_search_limits(text: str, k: int, limits: Limits) -> None:
    """422 (like FastAPI's own validation) for a text or k over the app's limits; the OpenAPI document states
    the same bounds (`CirlabApp.openapi`)."""
    errors = []
    if len(text) > limits.max_text_chars:
        errors.append(_over_limit("text", "body", "string_too_long",
                                  f"String should have at most {limits.max_text_chars} characters", text))
    if k > limits.max_k:
        errors.append(_over_limit("k", "body", "less_than_equal",
                                  f"Input should be less than or equal to {limits.max_k}", k))
    if errors:
        raise RequestValidationError(errors)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else "request failed"
    return JSONResponse({"error": message}, status_code=exc.status_code, headers=exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": _validation_message(exc)}, status_code=422)


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


async def health(state: Served) -> dict[str, Any]:
    """Liveness, the index and the input limits."""
    index, batcher = state.retriever.index, state.batcher
    return {"status": "ok", "version": __version__, "images": len(index), "kind": index.kind,
            "model": index.meta["run"].get("model"), "dataset": index.meta["run"].get("dataset"),
            "dim": index.meta["dim"], "limits": asdict(state.limits),
            "served": {"searches": batcher.queries, "batches": batcher.batches, "reloads": batcher.reloads}}


async def gallery(request: Request, state: Served, offset: Annotated[int, Query(ge=0)] = 0,
                  limit: Annotated[int, Query(ge=1)] = 48) -> dict[str, Any]:
    """A page of gallery ids; `limit` is at most the page size in /api/health (the default is cut to it)."""
    page = state.limits.gallery_page
    if limit > page:
        if "limit" in request.query_params:
            raise RequestValidationError([_over_limit("limit", "query", "less_than_equal",
                                                      f"Input should be less than or equal to {page}", limit)])
        limit = page
    index = state.retriever.index
    items = index.items[offset:offset + limit]
    return {"total": len(index), "offset": offset,
            "items": [{"id": it.id, "image": f"/api/images/{it.id}", "thumb": f"/api/images/{it.id}?thumb=true"}
                      for it in items]}


async def search(request: Request, state: Served,
                 text: Annotated[str, Form(min_length=1, pattern=TEXT_PATTERN,
                                           description="the change; not only ASCII whitespace")],
                 k: Annotated[int, Form(ge=1)] = 10,
                 id: Annotated[str | None, Form(max_length=128, pattern=ID_PATTERN.pattern),
                               WithJsonSchema({"type": "string", "maxLength": 128, "pattern": ID_PATTERN.pattern,
                                               "description": "reference gallery id (or send image)"})] = None,
                 image: Annotated[UploadFile | None, File(),
                                  WithJsonSchema({"type": "string", "format": "binary",
                                                  "contentMediaType": "application/octet-stream",
                                                  "description": "reference image upload (or send id): "
                                                                 + ", ".join(UPLOAD_FORMATS)})] = None,
                 ) -> dict[str, Any]:
    """The top k gallery images for a reference (a gallery id, itself never returned, or an upload) and a text."""
    started = time.perf_counter()
    retriever, limits = state.retriever, state.limits
    check_search_limits(text, k, limits)
    text = text.strip(TEXT_SPACE)
    if id is None and image is None:
        if "image" in await request.form():  # an empty file part without a file name
            raise HTTPException(400, "image: the uploaded file is empty")
        raise HTTPException(422, "give exactly one reference: id (a gallery image) or image (an upload)")
    if id is not None:
        if not is_valid_id(id):
            raise HTTPException(422, "id: gallery ids are letters, digits, '.', '_' and '-'")
        if retriever.index.position(id) is None:
            raise HTTPException(404, f"id: no gallery image has id {id!r}")
        query = await run_in_threadpool(_gallery_query, retriever, id, text)
        reference: dict[str, Any] = {"id": id}
    else:
        if not await state.decodes.acquire():
            raise HTTPException(503, f"busy: {limits.max_decodes} uploads are being decoded; retry in a moment",
                                headers={"retry-after": "1"})
        try:
            data = await image.read(limits.max_upload_bytes + 1)
            pil, (width, height) = await run_in_threadpool(decode_upload, data, limits, state.upload_side)
        finally:
            state.decodes.release()
        query = ComposedQuery(pil, text)
        reference = {"upload": {"width": width, "height": height}}
    hits = await state.batcher.search(query, k)
    return {"query": {"reference": reference, "text": text, "k": k}, "results": [_hit_json(h) for h in hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 2)}


async def gallery_image(state: Served, item_id: str, thumb: bool = False) -> Response:
    """A gallery image, or its PNG thumbnail, by id (never by path)."""
    index = state.retriever.index
    pos = index.position(item_id)
    if pos is None:
        raise HTTPException(404, "no gallery image has this id")
    item = index.items[pos]
    if not (Path(item.path).is_file() and os.access(item.path, os.R_OK)):
        log.warning("gallery image %s: file missing or unreadable: %s", item.id, item.path)
        raise HTTPException(404, f"the file of gallery image {item.id!r} is missing on the server")
    cache = {"cache-control": "public, max-age=3600"}
    if thumb:
        try:
            data = await run_in_threadpool(state.thumbs.get, item.id, item.path)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            log.warning("gallery image %s: cannot read %s: %s", item.id, item.path, exc)
            raise HTTPException(404, f"gallery image {item.id!r} cannot be read on the server") from None
        return Response(data, media_type="image/png", headers=cache)
    media = mimetypes.guess_type(item.path)[0] or "application/octet-stream"
    return FileResponse(item.path, media_type=media, headers=cache)


async def page() -> FileResponse:
    """The web page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


class CirlabApp(FastAPI):
    """The FastAPI app with an OpenAPI document completed from its `ServingState`: the bounds that come from
    `Limits` (text length, k, gallery page), what form fields cannot say (exactly one of `id` and `image`), and
    the first gallery id as the example id, so that a client (or a fuzzer) can try the id routes."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            state: ServingState = self.state.serving
            doc = get_openapi(title=self.title, version=self.version, description=self.description,
                              routes=self.routes)
            ref = doc["paths"]["/api/search"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
            form = doc["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
            form["oneOf"] = [{"required": ["id"]}, {"required": ["image"]}]
            form["properties"]["text"]["maxLength"] = state.limits.max_text_chars
            form["properties"]["k"]["maximum"] = state.limits.max_k
            for parameter in doc["paths"]["/api/gallery"]["get"]["parameters"]:
                if parameter["name"] == "limit":
                    parameter["schema"]["maximum"] = state.limits.gallery_page
            index = state.retriever.index
            if len(index):
                form["properties"]["id"]["examples"] = [index.items[0].id]
                for parameter in doc["paths"]["/api/images/{item_id}"]["get"]["parameters"]:
                    if parameter["name"] == "item_id":
                        parameter["schema"]["examples"] = [index.items[0].id]
            self.openapi_schema = doc
        return self.openapi_schema


def create_app(retriever: Retriever, limits: Limits | None = None, allowed_hosts: set[str] | None = None,
               reload_check_s: float | None = 2.0) -> FastAPI:
    """The app over a loaded `Retriever`: wires the module's handlers and keeps their shared state in
    `app.state.serving`. `allowed_hosts` (None: any) guards against DNS rebinding; the index directory is
    checked for a newer version every `reload_check_s` seconds (0: before every batch; None: never) and
    re-opened atomically when `cirlab index --add` rewrote it."""
    limits = limits or Limits()
    app = CirlabApp(title="cirlab", version=__version__, docs_url=None, redoc_url=None,
                    description="Composed image retrieval: a reference image plus a text describing a change. "
                                "Every error is a JSON object {\"error\": \"...\"}.")
    app.state.serving = ServingState(
        retriever=retriever, limits=limits, batcher=SearchBatcher(retriever, limits.max_batch, reload_check_s),
        decodes=DecodeSlots(limits.max_decodes, limits.decode_wait_s), thumbs=ThumbnailCache(limits.thumb_side),
        upload_side=retriever.pipeline.preprocess.size)
    app.add_middleware(GuardMiddleware, max_body=limits.max_upload_bytes + 64 * 1024, allowed_hosts=allowed_hosts,
                       read_timeout_s=limits.read_timeout_s)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_api_route("/api/health", health, methods=["GET"], summary="Liveness, the index and the input limits",
                      responses=error_responses(400, 413))
    app.add_api_route("/api/gallery", gallery, methods=["GET"], summary="A page of gallery ids (for browsing)",
                      responses=error_responses(400, 413, 422))
    app.add_api_route("/api/search", search, methods=["POST"],
                      summary="Rank the gallery for a reference (gallery id or upload) and a text",
                      dependencies=[Depends(check_form_parts)],
                      responses=error_responses(400, 403, 404, 408, 413, 422, 503))
    app.add_api_route("/api/images/{item_id}", gallery_image, methods=["GET"],
                      summary="A gallery image (or its thumbnail) by id",
                      responses={200: {"content": {"image/png": {}, "image/jpeg": {}}},
                                 **error_responses(400, 404, 413, 422)})
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _gallery_query(retriever: Retriever, item_id: str, text: str) -> ComposedQuery:
    try:
        return retriever.query_for_id(item_id, text)
    except Exception as exc:  # the file behind a valid id went missing or is corrupt: the server's problem
        log.warning("gallery image %s cannot be read: %s", item_id, exc)
        raise HTTPException(404, f"the image of gallery id {item_id!r} cannot be read on the server") from None
