"""Recipes as files: every shipped recipe is a complete, valid TrainConfig that builds its model; the CLI trains
from a recipe or from an earlier run's config.json, with `--set` overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cirlab.cli.main import main
from cirlab.models import build_model
from cirlab.training import TrainConfig
from cirlab.training.recipes import RECIPE_DIR, list_recipes, load_recipe, recipe
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import load_tensors

REQUIRED = {"tirg_css", "tirg_fashion200k", "tirg_mitstates", "composeae_fashion200k", "composeae_mitstates",
            "composeae_fashioniq", "realspace_concat_ae_fashion200k", "realspace_concat_ae_mitstates",
            "realspace_concat_ae_fashioniq", "film_san_fashioniq", "crn_fashioniq", "crn_shoes", "crn_fashion200k",
            "combiner_fashioniq", "combiner_cirr", "demo"}
TINY_TEXT = {"lstm": {"word_dim": 8, "hidden_dim": 16}, "crn_lstm": {"word_dim": 8, "hidden_dim": 16}}


def test_every_required_recipe_ships_with_paper_and_source() -> None:
    assert REQUIRED <= set(list_recipes())
    for name in list_recipes():
        r = load_recipe(name)
        assert r.paper and r.source, name
        assert "data_root" not in r.train, f"{name}: a recipe leaves the data root to the user"
        full = TrainConfig().to_dict()
        full.pop("data_root")
        assert set(r.train) == set(full), f"{name}: not a complete configuration"
        assert name == "demo" or name.startswith(r.train["model"]["name"] + "_"), name


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_every_recipe_builds_its_model_at_tiny_size(name: str) -> None:
    config = recipe(name, data_root="unused", model={"embed_dim": 16})
    text = config.model.text_encoder
    if text in TINY_TEXT:
        config.model.text_options = {**config.model.text_options, **TINY_TEXT[text], }
        config.model.text_dim = TINY_TEXT[text]["hidden_dim"]
    model = build_model(config.model, texts=["make it red", "add a cube"])
    with torch.no_grad():
        out = model.compose(torch.zeros(2, 3, 64, 64), ["make it red", "add a cube"])
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_overrides_and_errors() -> None:
    crn = recipe("crn_shoes", data_root="d")
    assert (crn.epochs, crn.lr_decay_epochs, crn.lr_decay_until_epochs, crn.seed) == (50, 20, 30, 6195)
    short = recipe("crn_shoes", data_root="d", iters=5)
    assert short.iters == 5 and short.epochs == 0  # iterations replace the length in epochs
    with pytest.raises(CirlabError, match="unknown setting 'itres'"):
        recipe("demo", itres=5)
    with pytest.raises(CirlabError, match="unknown recipe 'tirg_cs'; choose from: "):
        recipe("tirg_cs")
    assert sorted(p.stem for p in RECIPE_DIR.glob("*.json")) == list_recipes()


def test_train_from_recipe_then_rerun_from_its_config(tiny_css: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    tiny = ["--set", "model.embed_dim=16", "--set", "model.text_dim=16", "--set", "model.image_options={\"width\": 4}",
            "--set", "model.text_options={\"word_dim\": 8, \"hidden_dim\": 16}", "--set", "iters=3",
            "--set", "batch_size=4"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert main(["train", "--recipe", "demo", "--data-root", str(tiny_css), "--out", str(first), "--no-eval",
                 *tiny]) == 0
    saved = json.loads((first / "config.json").read_text())["train"]
    assert (saved["iters"], saved["model"]["embed_dim"], saved["data_root"]) == (3, 16, str(tiny_css))
    assert main(["train", "--config", str(first / "config.json"), "--out", str(second), "--no-eval"]) == 0
    assert json.loads((second / "config.json").read_text())["train"] == saved
    a, b = load_tensors(first / "model.safetensors"), load_tensors(second / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "a rerun from config.json must train the same weights"
    capsys.readouterr()
    assert main(["train", "--recipe", "demo", "--model", "crn", "--data-root", str(tiny_css)]) == 2
    assert "--model cannot be combined with --recipe" in capsys.readouterr().err


def test_recipes_command_lists_papers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REQUIRED) and "Vo et al." in out
    assert main(["recipes", "crn_shoes"]) == 0
    assert json.loads(capsys.readouterr().out)["train"]["model"]["name"] == "crn"
