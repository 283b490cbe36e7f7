"""The web page end to end in real headless Chromium: pick a reference, describe a change, refine by clicking.

Needs Debian's `chromium` (CI installs it with apt) and the `playwright` Python package; skipped with the
reason when either is missing. The screenshot lands in test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from _index_helpers import make_tiny_run

from cirlab.index import Retriever, build_index, source_from_dataset
from cirlab.inference import load
from cirlab.serving import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("browser")
    pipe = load(make_tiny_run(tiny_css, root / "run"))
    build_index(pipe, source_from_dataset(pipe.open_dataset("test")), root / "index", progress=False)
    app = create_app(Retriever.open(root / "index"), allowed_hosts={"127.0.0.1"})
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{server.config.port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_pick_search_click_to_refine_in_chromium(server_url: str, tiny_css: Path) -> None:
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"chromium not found at {CHROMIUM} (install Debian's chromium package to run this test)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    expect = sync_api.expect
    expect.set_options(timeout=20_000)  # generous for a busy CI machine; a passing run never waits this long
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server_url)
            expect(page.locator("#status")).to_contain_text("100 images")

            # pick a reference from the gallery
            page.click("#browse")
            expect(page.locator("#gallery .gallery-item")).to_have_count(48)
            page.locator("#gallery .gallery-item").nth(5).click()
            expect(page.locator("#reference")).to_have_attribute("data-reference", "css_test_000005")

            # describe a change and see results
            page.fill("#text", "make top-left object red")
            page.click("#search")
            results = page.locator("#results .result")
            expect(results).to_have_count(20)
            expect(page.locator("#results-title")).to_contain_text("make top-left object red")
            expect(page.locator("#trail .turn")).to_have_count(1)
            ids = [results.nth(i).get_attribute("data-id") for i in range(20)]
            assert "css_test_000005" not in ids and len(set(ids)) == 20

            # click a result: it becomes the next reference; type a further change
            chosen = ids[2]
            results.nth(2).click()
            expect(page.locator("#reference")).to_have_attribute("data-reference", chosen)
            expect(page.locator("#trail .turn").first.locator("img")).to_have_count(2)
            page.fill("#text", "remove blue cube")
            page.press("#text", "Enter")
            expect(page.locator("#results-title")).to_contain_text("remove blue cube")
            expect(page.locator("#trail .turn")).to_have_count(2)
            expect(results).to_have_count(20)
            assert chosen not in [results.nth(i).get_attribute("data-id") for i in range(20)]

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "browser_refine.png"), full_page=True)

            # an uploaded reference starts a new session; a bad upload shows the server's message
            page.set_input_files("#upload", str(tiny_css / "images" / "css_test_000009.png"))
            expect(page.locator("#reference")).to_have_attribute("data-reference", "upload")
            expect(page.locator("#trail .turn")).to_have_count(0)
            page.fill("#text", "add small red circle to top-left")
            page.click("#search")
            expect(page.locator("#trail .turn")).to_have_count(1)
            expect(results).to_have_count(20)
            page.set_input_files("#upload", files=[{"name": "notes.png", "mimeType": "image/png",
                                                    "buffer": b"not an image"}])
            page.click("#search")
            expect(page.locator("#message")).to_contain_text("not a decodable image")
        finally:
            browser.close()
    assert [p for p in problems if "400" not in p] == []  # the bad upload's 400 is logged by Chromium
    assert (ARTIFACTS / "browser_refine.png").stat().st_size > 10_000
