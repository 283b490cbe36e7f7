"""Multi-turn interactive evaluation on CSS: edit distances, episode sampling, the turn loop, the CLI and its PNG."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from _index_helpers import make_tiny_run
from PIL import Image

from cirlab.cli.main import main
from cirlab.datasets.css_synth import apply_modification
from cirlab.evaluation.interactive import (
    InteractiveConfig,
    format_table,
    interactive_eval,
    sample_episodes,
    steps_between,
)
from cirlab.training import load_run, open_dataset
from cirlab.utils.errors import CirlabError


@pytest.fixture(scope="module")
def run_dir(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tiny_css, tmp_path_factory.mktemp("interactive") / "run")


def test_one_modification_is_one_step_and_steps_are_a_path(tiny_css: Path, run_dir: Path) -> None:
    dataset = open_dataset(load_run(run_dir).config, "test")
    for mod in dataset.mods[:20]:
        src, tgt = dataset.objects[mod["from"][0]], dataset.objects[mod["to"][0]]
        assert steps_between(src, tgt) == 1
        assert steps_between(apply_modification(src, mod["to_str"]), tgt) == 0
    assert steps_between(dataset.objects[0], dataset.objects[0]) == 0


def test_episodes_respect_the_step_range_and_the_seed(run_dir: Path) -> None:
    dataset = open_dataset(load_run(run_dir).config, "test")
    config = InteractiveConfig(turns=4, episodes=30, min_steps=2, max_steps=3, seed=3)
    episodes = sample_episodes(dataset, config)
    assert len(episodes) == 30 and episodes == sample_episodes(dataset, config)
    for ref, tgt, steps in episodes:
        assert 2 <= steps <= 3 and steps == steps_between(dataset.objects[ref], dataset.objects[tgt])
        assert dataset.labels[ref] != dataset.labels[tgt]


def test_turn_loop_is_monotone_and_a_gallery_sized_k_always_succeeds(run_dir: Path) -> None:
    run = load_run(run_dir)
    dataset = open_dataset(run.config, "test")
    result = interactive_eval(run, dataset, InteractiveConfig(turns=3, k=5, episodes=20), progress=False)
    rows = result["turns"]
    assert [r["turn"] for r in rows] == [0, 1, 2, 3] and rows[0]["success@k"] == 0.0
    assert all(a["success@k"] <= b["success@k"] for a, b in zip(rows, rows[1:], strict=False))
    assert all(0 <= r["success@1"] <= r["success@k"] <= 1 for r in rows)
    first = result["examples"][0]["turns"][0]
    assert first["text"].split()[0] in ("add", "remove", "make") and first["reference"] == result["examples"][0][
        "reference"]
    assert "success@5" in format_table(result)
    everything = interactive_eval(run, dataset, InteractiveConfig(turns=2, k=len(dataset) - 1, episodes=10),
                                  progress=False)
    assert everything["turns"][1]["success@k"] == 1.0 and everything["turns"][1]["mean_steps_left"] == 0.0


def test_cli_writes_json_and_a_png_curve(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["interactive-eval", str(run_dir), "--episodes", "10", "--turns", "2", "-k", "3", "--out",
                 str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["turns"]) == 3 and printed["episodes"] == 10
    saved = json.loads((tmp_path / "interactive_eval.json").read_text())
    assert saved["turns"] == printed["turns"]
    with Image.open(tmp_path / "interactive_eval.png") as png:
        assert png.format == "PNG" and png.size == (720, 440)


def test_bad_settings_and_non_css_datasets_are_clear_errors(run_dir: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    assert main(["interactive-eval", str(run_dir), "--turns", "0"]) == 2
    assert "--turns, --k and --episodes must be >= 1" in capsys.readouterr().err
    assert main(["interactive-eval", str(run_dir), "--min-steps", "4", "--max-steps", "2"]) == 2
    assert "--min-steps" in capsys.readouterr().err
    with pytest.raises(CirlabError, match="needs CSS scenes"):
        sample_episodes(SimpleNamespace(name="fashioniq"), InteractiveConfig())  # type: ignore[arg-type]
