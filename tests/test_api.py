"""The HTTP API: search by id and by upload, images by id, health, OpenAPI, and every kind of bad input."""

from __future__ import annotations

import asyncio
import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from _index_helpers import make_tiny_run
from fastapi.testclient import TestClient
from PIL import Image

from cirlab.index import Retriever, build_index, source_from_dataset
from cirlab.inference import load
from cirlab.serving import Limits, create_app, demo_index
from cirlab.utils.errors import CirlabError

LIMITS = Limits(max_upload_bytes=100_000, max_pixels=500_000, max_text_chars=50, max_k=20)


@pytest.fixture(scope="module")
def retriever(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Retriever:
    root = tmp_path_factory.mktemp("api")
    pipe = load(make_tiny_run(tiny_css, root / "run"))
    build_index(pipe, source_from_dataset(pipe.open_dataset("test")), root / "index", progress=False)
    return Retriever.open(root / "index")


@pytest.fixture(scope="module")
def client(retriever: Retriever) -> TestClient:
    return TestClient(create_app(retriever, LIMITS, allowed_hosts={"testserver"}), raise_server_exceptions=False)


def png_bytes(size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 0).save(buffer, format=fmt)
    return buffer.getvalue()


def error_of(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]
    return body["error"]


def test_health_reports_the_index_and_limits(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["images"] == 100 and body["kind"] == "exact" and body["model"] == "tirg"
    assert body["limits"]["max_k"] == 20


def test_openapi_document_lists_the_api(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert {"/api/search", "/api/images/{item_id}", "/api/health", "/api/gallery"} <= set(doc["paths"])
    assert "multipart/form-data" in doc["paths"]["/api/search"]["post"]["requestBody"]["content"]


def test_search_by_id_ranks_like_the_retriever_and_skips_the_reference(client: TestClient,
                                                                       retriever: Retriever) -> None:
    response = client.post("/api/search", data={"id": "css_test_000007", "text": "remove red circle", "k": "5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == {"reference": {"id": "css_test_000007"}, "text": "remove red circle", "k": 5}
    direct = retriever.search([retriever.query_for_id("css_test_000007", "remove red circle")], 5)[0]
    assert [r["id"] for r in body["results"]] == [h.id for h in direct]
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    assert body["results"][0]["score"] == pytest.approx(direct[0].score, abs=1e-5)
    assert body["results"][0]["image"] == f"/api/images/{direct[0].id}"
    assert "path" not in body["results"][0]  # server paths are not exposed


def test_search_by_upload_uses_the_uploaded_pixels(client: TestClient, retriever: Retriever, tiny_css: Path) -> None:
    data = (tiny_css / "images" / "css_test_000007.png").read_bytes()
    body = client.post("/api/search", data={"text": "remove red circle", "k": "6"},
                       files={"image": ("mine.png", data, "image/png")}).json()
    assert body["query"]["reference"] == {"upload": {"width": 64, "height": 64}}
    by_id = client.post("/api/search", data={"id": "css_test_000007", "text": "remove red circle", "k": "5"}).json()
    assert [r["id"] for r in body["results"] if r["id"] != "css_test_000007"][:5] == \
        [r["id"] for r in by_id["results"]]


def test_images_and_thumbnails_are_served_by_id(client: TestClient, tiny_css: Path) -> None:
    full = client.get("/api/images/css_test_000003")
    assert full.status_code == 200 and full.headers["content-type"] == "image/png"
    assert full.content == (tiny_css / "images" / "css_test_000003.png").read_bytes()
    thumb = client.get("/api/images/css_test_000003", params={"thumb": "true"})
    assert thumb.status_code == 200
    assert Image.open(io.BytesIO(thumb.content)).size[0] <= LIMITS.thumb_side


def test_gallery_pages_through_every_id(client: TestClient) -> None:
    first = client.get("/api/gallery", params={"offset": 0, "limit": 60}).json()
    second = client.get("/api/gallery", params={"offset": 60, "limit": 60}).json()
    ids = [i["id"] for i in first["items"] + second["items"]]
    assert first["total"] == 100 and len(ids) == 100 == len(set(ids))
    assert error_of(client.get("/api/gallery", params={"limit": 10_000}), 422).startswith("limit:")
    assert error_of(client.get("/api/gallery", params={"offset": -1}), 422).startswith("offset:")


def test_the_page_and_its_assets_are_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<title>cirlab" in page.text and "/static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/app.css").status_code == 200
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize(("data", "status", "message"), [
    ({"id": "css_test_000001", "text": "x" * 51}, 422, "text: String should have at most 50 characters"),
    ({"id": "css_test_000001", "text": "   "}, 422, "text: describe the change"),
    ({"id": "css_test_000001"}, 422, "text: describe the change"),
    ({"id": "css_test_000001", "text": "red", "k": "0"}, 422, "k: Input should be greater than or equal to 1"),
    ({"id": "css_test_000001", "text": "red", "k": "21"}, 422, "k: Input should be less than or equal to 20"),
    ({"id": "css_test_000001", "text": "red", "k": "ten"}, 422, "k: Input should be a valid integer"),
    ({"text": "red"}, 422, "give exactly one reference"),
    ({"id": "../../etc/passwd", "text": "red"}, 422, "id: gallery ids are"),
    ({"id": "css_test_999999", "text": "red"}, 404, "no gallery image has id 'css_test_999999'"),
    ({"id": "x" * 200, "text": "red"}, 422, "id: String should have at most 128 characters"),
])
def test_bad_form_fields_are_4xx_with_a_clear_message(client: TestClient, data: dict, status: int,
                                                      message: str) -> None:
    assert message in error_of(client.post("/api/search", data=data), status)


def test_both_references_at_once_is_rejected(client: TestClient) -> None:
    response = client.post("/api/search", data={"id": "css_test_000001", "text": "red"},
                           files={"image": ("a.png", png_bytes(), "image/png")})
    assert "exactly one reference" in error_of(response, 422)


@pytest.mark.parametrize(("payload", "status", "message"), [
    (b"", 400, "the uploaded file is empty"),
    (b"hello, I am not an image", 400, "not a decodable image"),
    (png_bytes()[:60], 400, "corrupt or truncated"),
    (png_bytes(fmt="TIFF"), 400, "not a decodable image"),  # a real image, but not a format uploads may use
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", 400, "not a decodable image"),
    (png_bytes((1000, 1000), mode="1"), 413, "1000 x 1000 pixels is over the limit of 500000"),  # ~1 KB bomb
])
def test_bad_uploads_are_rejected_before_or_while_decoding(client: TestClient, payload: bytes, status: int,
                                                           message: str) -> None:
    response = client.post("/api/search", data={"text": "red"}, files={"image": ("x.png", payload, "image/png")})
    assert message in error_of(response, status)


def test_uploads_over_the_byte_limit_are_refused(client: TestClient) -> None:
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(big).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > LIMITS.max_upload_bytes
    response = client.post("/api/search", data={"text": "red"}, files={"image": ("big.png", buffer.getvalue())})
    assert "over the limit" in error_of(response, 413)

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(40):
            yield b"x" * 8192

    response = client.post("/api/search", content=chunks(),
                           headers={"content-type": "multipart/form-data; boundary=abc"})
    assert "over the limit" in error_of(response, 413)


def test_malformed_bodies_are_json_errors_not_crashes(client: TestClient) -> None:
    assert error_of(client.post("/api/search", json={"id": "css_test_000001", "text": "red"}), 422)
    response = client.post("/api/search", content=b"--abc\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert 400 <= response.status_code < 500 and "error" in response.json()
    rng = np.random.default_rng(1)
    for _ in range(20):
        payload = png_bytes()[:16] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        response = client.post("/api/search", data={"text": "red"}, files={"image": ("f.png", payload)})
        assert 400 <= response.status_code < 500, response.text


@pytest.mark.parametrize("path", [
    "/api/images/..%2F..%2Fetc%2Fpasswd", "/api/images/%2e%2e", "/api/images/.hidden", "/api/images/..",
    "/api/images/css_test_000001.png", "/api/images/%2Fetc%2Fpasswd", "/static/..%2F..%2Fapp.py",
])
def test_no_request_reads_a_file_outside_the_gallery(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404, path
    assert "root:" not in response.text and "import" not in response.text


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    assert error_of(client.get("/api/nothing"), 404)
    assert error_of(client.get("/api/search"), 405)


def test_no_cors_and_foreign_hosts_are_refused(client: TestClient) -> None:
    response = client.get("/api/health", headers={"origin": "https://evil.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    preflight = client.options("/api/search", headers={"origin": "https://evil.example",
                                                       "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "Host header" in error_of(client.get("/api/health", headers={"host": "evil.example"}), 400)


def test_concurrent_searches_are_batched_and_answer_like_sequential_ones(retriever: Retriever) -> None:
    app = create_app(retriever, LIMITS)
    texts = ["remove red circle", "add large blue cube to top-left", "make middle-center object green",
             "remove gray cylinder"] * 3
    ids = [f"css_test_{i:06d}" for i in range(12)]

    async def run_all() -> list[dict]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            responses = await asyncio.gather(*[http.post("/api/search", data={"id": i, "text": t, "k": "3"})
                                               for i, t in zip(ids, texts, strict=True)])
        return [r.json() for r in responses]

    bodies = asyncio.run(run_all())
    for item_id, text, body in zip(ids, texts, bodies, strict=True):
        direct = retriever.search([retriever.query_for_id(item_id, text)], 3)[0]
        assert [r["id"] for r in body["results"]] == [h.id for h in direct]
    assert app.state.serving.batcher.queries == 12 and 1 <= app.state.serving.batcher.batches <= 12


def test_routes_are_module_level_and_each_app_states_and_applies_its_own_limits(retriever: Retriever) -> None:
    from fastapi.routing import APIRoute

    import cirlab.serving.app as serving_app

    small = create_app(retriever, Limits(max_text_chars=12, max_k=4, gallery_page=5))
    for route in small.routes:
        if isinstance(route, APIRoute):
            assert getattr(serving_app, route.endpoint.__name__) is route.endpoint, route.path  # not a closure
    doc = TestClient(small).get("/openapi.json").json()
    form = doc["components"]["schemas"][doc["paths"]["/api/search"]["post"]["requestBody"]["content"][
        "multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[1]]["properties"]
    assert (form["text"]["maxLength"], form["k"]["maximum"]) == (12, 4)
    page = next(p for p in doc["paths"]["/api/gallery"]["get"]["parameters"] if p["name"] == "limit")
    assert page["schema"]["maximum"] == 5
    http = TestClient(small, raise_server_exceptions=False)
    assert len(http.get("/api/gallery").json()["items"]) == 5  # the default 48 is cut to the page size
    assert "limit: Input should be less than or equal to 5" in error_of(http.get("/api/gallery?limit=6"), 422)
    both = error_of(http.post("/api/search", data={"id": "css_test_000001", "text": "x" * 13, "k": "5"}), 422)
    assert both == ("text: String should have at most 12 characters; k: Input should be less than or equal to 4")
    wide = TestClient(create_app(retriever, LIMITS), raise_server_exceptions=False)  # another app, its own limits
    assert wide.post("/api/search", data={"id": "css_test_000001", "text": "x" * 13, "k": "5"}).status_code == 200


def test_serve_without_an_index_uses_the_demo_or_says_to_run_it(tiny_css: Path, tmp_path: Path) -> None:
    with pytest.raises(CirlabError, match="run `cirlab demo` first"):
        demo_index(tmp_path / "demo")
    make_tiny_run(tiny_css, tmp_path / "demo" / "run")
    index_dir = demo_index(tmp_path / "demo", progress=False)
    assert index_dir == tmp_path / "demo" / "index" and (index_dir / "vectors.npy").is_file()
    stamp = (index_dir / "index.json").stat().st_mtime_ns
    assert demo_index(tmp_path / "demo", progress=False) == index_dir  # reused, not rebuilt
    assert (index_dir / "index.json").stat().st_mtime_ns == stamp
    shutil.rmtree(tmp_path / "demo" / "run")
    make_tiny_run(tiny_css, tmp_path / "demo" / "run", seed=5)  # retrained: the index is rebuilt
    demo_index(tmp_path / "demo", progress=False)
    index = Retriever.open(index_dir).index
    assert index.meta["run"]["dir"] == "../run"  # relative: the demo folder can be moved as a whole
    assert index.run_dir.resolve() == (tmp_path / "demo" / "run").resolve()


def test_serve_command_reports_missing_inputs_as_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cirlab.cli.main import main

    assert main(["serve", "--demo-dir", str(tmp_path / "demo")]) == 2
    assert "run `cirlab demo` first" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing")]) == 2
    assert "index directory not found" in capsys.readouterr().err
    assert main(["serve", str(tmp_path), "--port", "70000"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
