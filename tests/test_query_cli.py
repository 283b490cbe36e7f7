"""`cirlab index` + `cirlab query` end to end: table and JSON output, --image and --id, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _index_helpers import make_tiny_run

from cirlab.cli.main import main


@pytest.fixture(scope="module")
def index_dir(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("query")
    run = make_tiny_run(tiny_css, root / "run")
    assert main(["index", str(run), "--split", "test", "--out", str(root / "index"), "--json"]) == 0
    return root / "index"


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_index_prints_a_json_summary(tiny_css: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_tiny_run(tiny_css, tmp_path / "run")
    assert main(["index", str(run), "--split", "test", "--out", str(tmp_path / "i"), "--json"]) == 0
    summary = last_json(capsys.readouterr().out)
    assert summary["count"] == summary["added"] == 100 and summary["kind"] == "exact"


def test_query_by_id_prints_ranked_ids_paths_and_scores(index_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["query", str(index_dir), "--id", "css_test_000010", "--text", "make top-left object red",
                 "-k", "4"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "id", "path"]
    rows = [line.split() for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    assert all(Path(r[3]).is_file() and r[2] in r[3] for r in rows)
    assert "css_test_000010" not in [r[2] for r in rows]
    scores = [float(r[1]) for r in rows]
    assert scores == sorted(scores, reverse=True)


def test_query_by_image_json_matches_query_by_id_of_another_image(index_dir: Path, tiny_css: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    image = tiny_css / "images" / "css_test_000010.png"
    capsys.readouterr()
    assert main(["query", str(index_dir), "--image", str(image), "--text", "remove red cube", "-k", "5",
                 "--json"]) == 0
    by_image = last_json(capsys.readouterr().out)
    assert [r["rank"] for r in by_image["results"]] == [1, 2, 3, 4, 5]
    assert main(["query", str(index_dir), "--id", "css_test_000010", "--text", "remove red cube", "-k", "5",
                 "--json"]) == 0
    by_id = last_json(capsys.readouterr().out)
    # same pixels, same text: the id query only drops the reference itself from its results
    expected = [r["id"] for r in by_image["results"] if r["id"] != "css_test_000010"]
    assert [r["id"] for r in by_id["results"]][:len(expected)] == expected
    assert by_id["results"][0]["score"] == pytest.approx(
        next(r["score"] for r in by_image["results"] if r["id"] == by_id["results"][0]["id"]), abs=1e-5)


@pytest.mark.parametrize(("args", "message"), [
    (["--id", "css_test_999999", "--text", "x"], "no image with id 'css_test_999999'"),
    (["--id", "../../etc/passwd", "--text", "x"], "no image with id"),
    (["--image", "/nonexistent.png", "--text", "x"], "image not found: /nonexistent.png"),
    (["--id", "css_test_000001", "--text", "  "], "--text is empty"),
    (["--id", "css_test_000001", "--text", "x", "-k", "0"], "-k must be >= 1"),
])
def test_bad_query_input_is_one_line(index_dir: Path, args: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["query", str(index_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cirlab: error:") and message in err and "\n" not in err


def test_query_on_a_missing_index_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", str(tmp_path / "nope"), "--id", "a", "--text", "x"]) == 2
    assert "index directory not found" in capsys.readouterr().err
