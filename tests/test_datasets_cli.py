"""`cirlab data stats`, `cirlab train/eval --dataset NAME` for every benchmark, and user errors at the command line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_datasets_cirr import make_cirr
from test_datasets_fashion200k import make_fashion200k
from test_datasets_fashioniq import make_fashioniq
from test_datasets_mitstates import make_mitstates
from test_datasets_shoes import make_shoes

from cirlab.cli.main import main
from cirlab.datasets import DATASETS

TINY = ["--embed-dim", "16", "--text-dim", "16", "--image-option", "width=4", "--text-option", "word_dim=8",
        "--text-option", "hidden_dim=16", "--image-size", "16", "--batch-size", "2", "--iters", "2",
        "--checkpoint-every", "0"]
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "fashion200k": make_fashion200k, "mitstates": make_mitstates, "fashioniq": make_fashioniq, "shoes": make_shoes,
    "cirr": make_cirr,
}
EVAL_SPLIT = {"fashion200k": "test", "mitstates": "test", "fashioniq": "val", "shoes": "test", "cirr": "val",
              "css": "test"}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def data_root(name: str, tmp_path: Path, tiny_css: Path) -> Path:
    return tiny_css if name == "css" else BUILDERS[name](tmp_path / name)


def test_every_benchmark_is_registered() -> None:
    assert set(DATASETS.names()) >= {"css", "fashion200k", "mitstates", "fashioniq", "shoes", "cirr"}


@pytest.mark.parametrize("name", sorted(EVAL_SPLIT))
def test_train_and_eval_run_for_every_dataset(name: str, tmp_path: Path, tiny_css: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    root, run = data_root(name, tmp_path, tiny_css), tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--dataset", name, "--data-root", str(root), "--out", str(run), *TINY)
    assert code == 0, err[-2000:]
    code, out, err = run_cli(capsys, "eval", str(run), "--json")
    assert code == 0, err[-2000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["dataset"] == name and result["split"] == EVAL_SPLIT[name]
    assert result["queries"] > 0 and result["protocol"]
    recalls = {k: v for k, v in result.items() if k.startswith("recall@")}
    assert recalls and all(0.0 <= v <= 1.0 for v in recalls.values())


@pytest.mark.parametrize("name", sorted(EVAL_SPLIT))
def test_data_stats_json_is_the_last_line(name: str, tmp_path: Path, tiny_css: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "data", "stats", "--dataset", name, "--data-root",
                             str(data_root(name, tmp_path, tiny_css)), "--json")
    assert code == 0, err
    lines = out.strip().splitlines()
    result = json.loads(lines[-1])
    assert lines[1].split()[:2] == ["split", "pairs"]  # the human-readable table comes first
    splits = result["splits"]
    assert set(splits) == set(DATASETS.get(name).splits)
    train, evaluated = splits["train"], splits[EVAL_SPLIT[name]]
    assert train["training_pairs"] > 0 and evaluated["queries"] > 0 and evaluated["gallery"] > 0
    assert train["missing_images"] == evaluated["missing_images"] == 0


def test_data_stats_per_category(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fashioniq(tmp_path / "fiq", missing=("Tva006",))
    code, out, _ = run_cli(capsys, "data", "stats", "--dataset", "fashioniq", "--data-root", str(root), "--json")
    assert code == 0
    val = json.loads(out.strip().splitlines()[-1])["splits"]["val"]
    assert {c: val[c]["queries"] for c in ("dress", "shirt", "toptee")} == {"dress": 3, "shirt": 3, "toptee": 3}
    assert val["toptee"]["missing_gallery"] == 1 and val["dress"]["missing_gallery"] == 0
    assert "val/toptee" in out and "1 image(s) missing" in out
    assert val["first_missing"] == [str(root / "images" / "Tva006.png")]  # the first place it was looked for


def test_missing_images_stop_training_with_paths_unless_skipped(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fashioniq(tmp_path / "fiq", missing=("Dtr001", "Dva003"))  # Dtr001 is the target of 2 pairs
    args = ["train", "--dataset", "fashioniq", "--data-root", str(root), *TINY]
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "2 of 9 training pairs" in err and str(root / "images" / "Dtr001.png") in err and "--skip-missing" in err
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "b"), "--skip-missing")
    assert code == 0, err[-2000:]
    assert "2 of 9 training pairs dropped (skip_missing)" in err
    assert "1 of 3 dress queries and 1 gallery image(s) dropped (skip_missing)" in err


def test_malformed_annotations_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_cirr(tmp_path / "cirr")
    bad = root / "cirr" / "captions" / "cap.rc2.val.json"
    bad.write_text('[{"pairid": 1,')
    code, _, err = run_cli(capsys, "data", "stats", "--dataset", "cirr", "--data-root", str(root))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"malformed CIRR captions file {bad}: line 1" in err
