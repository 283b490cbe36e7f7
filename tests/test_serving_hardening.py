"""Hostile-input hardening of `cirlab serve`: Host/Origin, duplicate parts, bombs and memory, ties and batching,
error bodies and the OpenAPI document, slow clients, log flooding, reloading, and the command's one-line errors.

Most tests run the app in-process; the ones about sockets, timeouts, the log and memory start a real
`cirlab serve` subprocess (module fixture `server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import pytest
from _index_helpers import make_image_dir, make_tiny_run
from fastapi.testclient import TestClient
from PIL import Image

from cirlab.index import Retriever, build_index, source_from_dataset, source_from_directory
from cirlab.inference import load
from cirlab.serving import Limits, create_app
from cirlab.serving.app import RepeatedLogFilter

LIMITS = Limits(max_upload_bytes=100_000, max_pixels=500_000, max_text_chars=50, max_k=20)
LOOPBACK = {"localhost", "127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def run_dir(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tiny_css, tmp_path_factory.mktemp("hard") / "run")


@pytest.fixture(scope="module")
def index_dir(run_dir: Path) -> Path:
    pipe = load(run_dir)
    out = run_dir.parent / "index"
    build_index(pipe, source_from_dataset(pipe.open_dataset("test")), out, progress=False)
    return out


@pytest.fixture(scope="module")
def retriever(index_dir: Path) -> Retriever:
    return Retriever.open(index_dir)


@pytest.fixture(scope="module")
def client(retriever: Retriever) -> TestClient:
    return TestClient(create_app(retriever, LIMITS, allowed_hosts=LOOPBACK), base_url="http://localhost:8000",
                      raise_server_exceptions=False)


def image_bytes(size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "PNG", color: object = "red",
                **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height and holds no pixels at all (about 60 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


# --- 5. Host and Origin ---


@pytest.mark.parametrize(("host", "ok"), [
    ("localhost:8000", True), ("LOCALHOST:8000", True), ("LocalHost", True), ("127.0.0.1:8000", True),
    ("[::1]:8000", True), ("[::1]", True),
    ("localhost:8000@evil.example", False), ("localhost:8000, evil.example", False), ("[::1].evil.example", False),
    ("evil.example", False), ("localhost.evil.example", False), ("localhost:", False), ("localhost:80:80", False),
    ("localhost:99999", False), ("localhost:８０", False), ("::1", False), ("[::1", False), ("", False),
    ("user@localhost", False), ("localhost/x", False), (" localhost", False),
])
def test_the_host_header_is_parsed_strictly_and_compared_case_insensitively(client: TestClient, host: str,
                                                                            ok: bool) -> None:
    response = client.get("/api/health", headers={"host": host.encode("utf-8")})
    if ok:
        assert response.status_code == 200, host
    else:
        assert "Host header" in error_of(response, 400)


def test_two_host_headers_are_refused(retriever: Retriever) -> None:
    app = create_app(retriever, LIMITS, allowed_hosts=LOOPBACK)
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/api/health", "raw_path": b"/api/health", "query_string": b"",
             "headers": [(b"host", b"localhost"), (b"host", b"evil.example")], "http_version": "1.1",
             "scheme": "http", "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": ""}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400 and b"Host header" in sent[1]["body"]


@pytest.mark.parametrize(("headers", "status"), [
    ({"origin": "https://evil.example"}, 403),
    ({"origin": "http://evil.example:8000"}, 403),
    ({"origin": "null"}, 403),
    ({"origin": "http://localhost:9999"}, 403),
    ({"origin": "http://localhost:8000", "sec-fetch-site": "cross-site"}, 403),
    ({"origin": "http://localhost:8000"}, 200),
    ({"origin": "http://LOCALHOST:8000"}, 200),
    ({}, 200),  # curl, scripts: no Origin
])
def test_state_changing_requests_from_another_site_are_refused(client: TestClient, headers: dict,
                                                               status: int) -> None:
    response = client.post("/api/search", data={"id": "css_test_000001", "text": "red"}, headers=headers)
    if status == 403:
        assert "Origin" in error_of(response, 403)
    else:
        assert response.status_code == 200, response.text
    # reading is not state-changing: a foreign page still cannot read it (no CORS), but it is not refused here
    assert client.get("/api/health", headers={"origin": "https://evil.example"}).status_code == 200


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    from cirlab.cli.main import main

    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cirlab: error:") and "\n" not in err, err
    return err


def test_binding_beyond_loopback_needs_allowed_hosts_or_an_explicit_any(index_dir: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    err = cli_error(["serve", str(index_dir), "--host", "0.0.0.0"], capsys)
    assert "--allowed-host" in err and "--allow-any-host" in err
    err = cli_error(["serve", str(index_dir), "--host", "0.0.0.0", "--allowed-host", "bad host@x"], capsys)
    assert "--allowed-host 'bad host@x'" in err
    err = cli_error(["serve", str(index_dir), "--allowed-host", "a.example", "--allow-any-host"], capsys)
    assert "not both" in err


def test_a_port_in_use_is_one_line_and_exit_2(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = cli_error(["serve", str(index_dir), "--port", str(port)], capsys)
    assert err == f"cirlab: error: port {port} on 127.0.0.1 is already in use"


# --- 6. duplicate form parts ---


@pytest.mark.parametrize(("data", "files", "field"), [
    ({"text": "red"}, [("image", ("a.png", b"not an image", "image/png")), ("image", ("b.png", image_bytes()))],
     "image"),
    ({"text": "red", "id": ["../../etc", "css_test_000001"]}, None, "id"),
    ({"text": ["", "red"], "id": "css_test_000001"}, None, "text"),
    ({"text": "red", "id": "css_test_000001", "k": ["ten", "3"]}, None, "k"),
])
def test_duplicate_form_parts_are_400_even_when_the_first_is_invalid(client: TestClient, data: dict, files: list,
                                                                     field: str) -> None:
    response = client.post("/api/search", data=data, files=files)
    assert f"'{field}'" in error_of(response, 400) and "more than once" in error_of(response, 400)


@pytest.mark.parametrize(("data", "files", "status", "message"), [
    ({"text": "red", "id": ""}, {"image": ("a.png", image_bytes())}, 422, "id: the field is empty"),
    ({"text": "red", "id": "css_test_000001", "k": ""}, None, 422, "k: the field is empty"),
    ({"text": "red", "image": "not a file"}, None, 422, "image: send a file"),
])
def test_form_parts_are_checked_as_the_schema_states_them(client: TestClient, data: dict, files: dict | None,
                                                          status: int, message: str) -> None:
    assert message in error_of(client.post("/api/search", data=data, files=files), status)


@pytest.mark.parametrize(("with_id", "status", "message"), [
    (True, 422, "exactly one reference"),
    (False, 400, "the uploaded file is empty"),
])
def test_an_empty_file_part_counts_as_an_upload(client: TestClient, with_id: bool, status: int, message: str) -> None:
    parts = [("text", "", b"red"), *([("id", "", b"css_test_000001")] if with_id else []),
             ("image", '; filename=""', b"")]
    body = b"".join(b'--b\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
                    % (name.encode(), extra.encode(), value) for name, extra, value in parts) + b"--b--\r\n"
    response = client.post("/api/search", content=body, headers={"content-type": "multipart/form-data; boundary=b"})
    assert message in error_of(response, status)


# --- 4. uploads: bombs, reduced decoding, bounded concurrency ---


@pytest.mark.parametrize(("payload", "limits"), [
    (png_header_only(3000, 3000), LIMITS),  # over our limit, under PIL's own bomb threshold
    (png_header_only(20_000, 20_000), LIMITS),  # over PIL's bomb threshold too (used to be a 400)
    (png_header_only(65_535, 65_535), LIMITS),
    (image_bytes((4096, 4096), mode="1", color=0), Limits()),  # a real, fully decodable 5 KB file
])
def test_a_decompression_bomb_is_413_whatever_its_file_size(retriever: Retriever, payload: bytes,
                                                            limits: Limits) -> None:
    bomb_client = TestClient(create_app(retriever, limits), raise_server_exceptions=False)
    response = bomb_client.post("/api/search", data={"text": "red"}, files={"image": ("b.png", payload)})
    assert "pixels is over the limit" in error_of(response, 413)


def test_the_default_pixel_limit_follows_the_models_input_and_jpegs_decode_reduced(retriever: Retriever) -> None:
    assert Limits().max_pixels <= 2048 * 2048
    default_client = TestClient(create_app(retriever), raise_server_exceptions=False)
    assert default_client.get("/api/health").json()["limits"]["max_pixels"] == Limits().max_pixels
    response = default_client.post("/api/search", data={"text": "red"},
                                   files={"image": ("zero.png", image_bytes((4096, 4096), color="black"))})
    assert "4096 x 4096 pixels is over the limit" in error_of(response, 413)
    # a 12 MP JPEG is over the limit as declared, but it decodes at 1/8 scale (504 x 378), which is not
    photo = image_bytes((4032, 3024), fmt="JPEG", color="navy", quality=50)
    response = default_client.post("/api/search", data={"text": "red"}, files={"image": ("photo.jpg", photo)})
    assert response.status_code == 200, response.text
    assert response.json()["query"]["reference"] == {"upload": {"width": 4032, "height": 3024}}


def test_exif_orientation_is_still_applied(client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: a portrait photo stored landscape
    photo = image_bytes((80, 40), fmt="JPEG", exif=exif.tobytes())
    body = client.post("/api/search", data={"text": "red"}, files={"image": ("p.jpg", photo)}).json()
    assert body["query"]["reference"] == {"upload": {"width": 40, "height": 80}}


def test_decodes_beyond_the_limit_get_503_with_a_json_body(retriever: Retriever,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import cirlab.serving.app as app_module

    app = create_app(retriever, Limits(max_decodes=1, decode_wait_s=0.05))
    started, release = threading.Event(), threading.Event()
    real = app_module.decode_upload

    def slow_decode(*args: object, **kwargs: object) -> object:
        started.set()
        release.wait(10)
        return real(*args, **kwargs)

    monkeypatch.setattr(app_module, "decode_upload", slow_decode)

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            upload = {"image": ("a.png", image_bytes())}
            first = asyncio.create_task(http.post("/api/search", data={"text": "red"}, files=upload))
            await asyncio.to_thread(started.wait, 10)
            second = await http.post("/api/search", data={"text": "red"}, files=upload)
            release.set()
            return await first, second

    first, second = asyncio.run(scenario())
    assert first.status_code == 200
    assert "busy" in error_of(second, 503) and second.headers["retry-after"] == "1"


# --- 3. ties, k and batching ---


@pytest.fixture(scope="module")
def tie_retriever(run_dir: Path) -> Retriever:
    """40 identical gallery images: every query ties them all."""
    folder = run_dir.parent / "same"
    folder.mkdir()
    picture = image_bytes((48, 48), color="teal")
    for i in range(40):
        (folder / f"same_{i:02d}.png").write_bytes(picture)
    build_index(load(run_dir), source_from_directory(folder), run_dir.parent / "same_index", progress=False)
    return Retriever.open(run_dir.parent / "same_index")


def test_a_querys_results_do_not_depend_on_the_k_of_requests_batched_with_it(
        tie_retriever: Retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(tie_retriever, LIMITS)
    batcher = app.state.serving.batcher
    entered, gate = threading.Event(), threading.Event()
    calls: list[int] = []
    compose = tie_retriever.compose

    def gated(queries: list) -> object:
        calls.append(len(queries))
        if len(calls) == 1:
            entered.set()
            gate.wait(10)
        return compose(queries)

    monkeypatch.setattr(tie_retriever, "compose", gated)
    upload = {"image": ("q.png", image_bytes((48, 48), color="teal"))}

    async def scenario() -> list[dict]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            def post(k: int) -> asyncio.Task:
                return asyncio.create_task(http.post("/api/search", data={"text": "add red cube", "k": str(k)},
                                                     files=upload))
            blocker = post(5)
            await asyncio.to_thread(entered.wait, 10)
            small, large = post(1), post(20)
            for _ in range(500):
                if batcher.pending == 2:
                    break
                await asyncio.sleep(0.01)
            gate.set()
            batched = [r.json() for r in await asyncio.gather(blocker, small, large)]
            alone = (await post(1)).json()
            return [*batched, alone]

    _, small, large, alone = asyncio.run(scenario())
    assert calls == [1, 2, 1]  # the k=1 and k=20 queries were composed and searched as one batch
    assert [r["id"] for r in small["results"]] == [r["id"] for r in alone["results"]] == ["same_00"]
    assert [r["id"] for r in large["results"]] == [f"same_{i:02d}" for i in range(20)]
    assert len({r["score"] for r in large["results"]}) == 1  # they really are ties


def test_a_client_that_leaves_while_queued_does_not_stop_the_search_worker(
        retriever: Retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(retriever, LIMITS)
    batcher = app.state.serving.batcher
    entered, gate = threading.Event(), threading.Event()
    compose = retriever.compose
    calls: list[int] = []
    queued: list[bool] = []

    def gated(queries: list) -> object:
        calls.append(len(queries))
        if len(calls) == 1:
            entered.set()
            gate.wait(10)
        return compose(queries)

    monkeypatch.setattr(retriever, "compose", gated)
    form = {"id": "css_test_000002", "text": "add red cube", "k": "3"}

    async def scenario() -> int:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            blocker = asyncio.create_task(http.post("/api/search", data=form))
            await asyncio.to_thread(entered.wait, 10)
            leaving = asyncio.create_task(http.post("/api/search", data=form))
            for _ in range(2000):
                if batcher.pending == 1:
                    queued.append(True)
                    break
                await asyncio.sleep(0.01)
            leaving.cancel()  # the client goes away while its query waits for the worker
            with contextlib.suppress(asyncio.CancelledError):
                await leaving  # its handler has seen the cancellation before the worker moves on
            gate.set()
            await blocker
            later = await asyncio.wait_for(http.post("/api/search", data=form), 20)
            return later.status_code

    assert asyncio.run(scenario()) == 200  # the worker still answers after a client left
    assert queued, "the leaving query never reached the queue (machine too slow for this scenario)"
    assert calls == [1, 1]  # the abandoned query was skipped, not composed


# --- 7. error bodies, OpenAPI, log flooding, slow clients ---


def test_an_unreadable_gallery_file_keeps_its_path_out_of_the_error(run_dir: Path, caplog: pytest.LogCaptureFixture,
                                                                    tmp_path: Path) -> None:
    images = make_image_dir(tmp_path / "imgs", 3)
    build_index(load(run_dir), source_from_directory(images), tmp_path / "index", progress=False)
    broken = images / "img_001.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken since indexing")
    local = TestClient(create_app(Retriever.open(tmp_path / "index"), LIMITS), raise_server_exceptions=False)
    with caplog.at_level(logging.WARNING, logger="cirlab.serving"):
        response = local.get("/api/images/img_001", params={"thumb": "true"})
        message = error_of(response, 404)
        search = local.post("/api/search", data={"id": "img_001", "text": "red"})
    assert str(tmp_path) not in response.text and "img_001.png" not in response.text
    assert str(tmp_path) not in search.text and search.status_code == 404
    assert "img_001" in message
    assert str(broken) in caplog.text  # the operator still learns which file


def test_openapi_documents_the_json_error_bodies_and_the_text_rule(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    search = doc["paths"]["/api/search"]["post"]
    for status in ("400", "403", "404", "413", "422", "503"):
        schema = search["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    assert "HTTPValidationError" not in json.dumps(doc)
    for path in ("/api/health", "/api/gallery", "/api/images/{item_id}"):
        operation = doc["paths"][path]["get"]
        assert {"400", "413"} <= set(operation["responses"]), path
    form = doc["components"]["schemas"][search["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
                                        .rsplit("/", 1)[1]]
    assert "text" in form["required"]
    assert form["oneOf"] == [{"required": ["id"]}, {"required": ["image"]}]  # exactly one reference
    assert form["properties"]["image"]["format"] == "binary" and "anyOf" not in form["properties"]["id"]
    text = form["properties"]["text"]
    assert text["minLength"] == 1 and text["maxLength"] == LIMITS.max_text_chars and text["pattern"]


@pytest.mark.parametrize("text", ["", "   ", "\t\n", None])
def test_an_empty_text_is_rejected_like_the_schema_says(client: TestClient, text: str | None) -> None:
    data = {"id": "css_test_000001"} | ({} if text is None else {"text": text})
    assert "text:" in error_of(client.post("/api/search", data=data), 422)


def test_a_non_ascii_space_text_is_accepted_like_the_schema_says(client: TestClient) -> None:
    response = client.post("/api/search", data={"id": "css_test_000001", "text": "\u3000red\x1c"})
    assert response.status_code == 200, response.text


def test_repeated_log_lines_are_summarised() -> None:
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("cirlab.test.flood")
    logger.propagate = False
    logger.addHandler(Keep())
    clock = [0.0]
    logger.addFilter(RepeatedLogFilter(burst=3, window_s=60, clock=lambda: clock[0]))
    for _ in range(200):
        logger.warning("Invalid HTTP request received.")
    logger.warning("something else")
    clock[0] = 61.0
    logger.warning("Invalid HTTP request received.")
    assert records[:3] == ["Invalid HTTP request received."] * 3
    assert records[3] == "something else"
    assert records[4] == "Invalid HTTP request received. (197 more like it in the last 61 s were not logged)"
    assert len(records) == 5


def test_a_stalled_request_body_gets_408(retriever: Retriever) -> None:
    app = create_app(retriever, Limits(read_timeout_s=0.2))
    sent: list[dict] = []
    parts = [b"--b\r\nContent-Disposition: form-data; name=\"text\"\r\n\r\nred\r\n"]

    async def receive() -> dict:
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": True}
        await asyncio.sleep(30)  # the client stops sending
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/search", "raw_path": b"/api/search",
             "query_string": b"", "http_version": "1.1", "scheme": "http", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"content-type", b"multipart/form-data; boundary=b"),
                         (b"content-length", b"5000")],
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000)}
    started = time.monotonic()
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    assert time.monotonic() - started < 5
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"].startswith("request body")


# --- 8. a running server sees `cirlab index --add` ---


def test_a_running_server_serves_images_added_to_its_index(run_dir: Path, tmp_path: Path) -> None:
    images = make_image_dir(tmp_path / "imgs", 4)
    pipe = load(run_dir)
    build_index(pipe, source_from_directory(images), tmp_path / "index", progress=False)
    live = TestClient(create_app(Retriever.open(tmp_path / "index"), LIMITS, reload_check_s=0),
                      raise_server_exceptions=False)
    assert live.get("/api/health").json()["images"] == 4
    assert live.post("/api/search", data={"id": "img_001", "text": "red", "k": "20"}).json()["results"]
    make_image_dir(images, 3, start=4)
    build_index(pipe, source_from_directory(images), tmp_path / "index", add=True, progress=False)
    found = live.post("/api/search", data={"id": "img_001", "text": "red", "k": "20"}).json()["results"]
    assert len(found) == 6 and "img_005" in [r["id"] for r in found]
    assert live.get("/api/gallery").json()["total"] == 7
    assert live.get("/api/images/img_005").status_code == 200
    health = live.get("/api/health").json()
    assert health["images"] == 7 and health["served"]["reloads"] == 1
    # an index rebuilt with other weights is not picked up: the server keeps answering with the one it has
    other = load(make_tiny_run(Path(pipe.run.data_root), tmp_path / "other", seed=3))
    shutil.rmtree(tmp_path / "index")
    build_index(other, source_from_directory(images), tmp_path / "index", progress=False)
    assert live.post("/api/search", data={"id": "img_001", "text": "red"}).status_code == 200
    assert live.get("/api/health").json()["served"]["reloads"] == 1


# --- real server: slow headers, the log, memory under concurrent large uploads ---


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(index_dir: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "cirlab.cli", "serve", str(index_dir), "--port", str(port),
             "--max-pixels", str(4096 * 4096), "--read-timeout", "1"],
            stdout=subprocess.DEVNULL, stderr=err, env=dict(os.environ, OMP_NUM_THREADS="1"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    yield {"url": url, "port": port, "pid": process.pid, "log": log}
    process.terminate()
    process.wait(timeout=30)


def test_a_client_that_sends_its_headers_too_slowly_is_cut_off(server: dict) -> None:
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
        sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
        started = time.monotonic()
        assert sock.recv(1024) == b""  # closed by the server
        assert time.monotonic() - started < 5


def test_bad_requests_do_not_flood_the_log(server: dict) -> None:
    replies = []
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", server["port"]), timeout=10) as sock:
            sock.sendall(b"GET /\x01\x02 HTTP/1.1\r\nHost: \x00\r\n\r\n")
            replies.append(b"".join(iter(lambda s=sock: s.recv(4096), b"")))  # until the server closes
    head, _, body = replies[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head
    assert json.loads(body)["error"].startswith("malformed HTTP request")
    assert httpx.get(f"{server['url']}/api/health").status_code == 200
    lines = [line for line in server["log"].read_text().splitlines() if "Invalid HTTP request" in line]
    assert 1 <= len(lines) <= 5


def memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def test_concurrent_large_uploads_keep_the_server_memory_bounded(server: dict) -> None:
    zero = image_bytes((4096, 4096), color="black")  # about 49 KB, 16.7 M pixels: inside this server's limit
    assert len(zero) < 100_000
    httpx.post(f"{server['url']}/api/search", data={"id": "css_test_000001", "text": "red"})  # warm
    idle = memory_kb(server["pid"], "VmRSS")
    try:
        Path(f"/proc/{server['pid']}/clear_refs").write_text("5")  # reset the peak to now
    except OSError:
        pass

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server["url"], timeout=120) as http:
            return await asyncio.gather(*[http.post("/api/search", data={"text": "red"},
                                                    files={"image": ("zero.png", zero)}) for _ in range(16)])

    responses = asyncio.run(burst())
    peak = memory_kb(server["pid"], "VmHWM")
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses, statuses
    for response in responses:
        if response.status_code == 503:
            assert "busy" in response.json()["error"]
    print(f"idle RSS {idle / 1024:.0f} MB, peak {peak / 1024:.0f} MB, statuses {sorted(statuses)}")
    assert (peak - idle) / 1024 < 300, f"peak {peak / 1024:.0f} MB vs idle {idle / 1024:.0f} MB"
