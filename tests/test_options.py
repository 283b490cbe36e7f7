"""Typed options: one boolean reader, one parser for CLI strings and config.json values, unknown keys refused with
the known ones listed, every registered component declaring its options, `--list-options`, old configs loading."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from conftest import tiny_model_config

from cirlab.cli._options import check_run_options
from cirlab.cli.main import main
from cirlab.datasets import DATASETS, build_dataset
from cirlab.encoders import IMAGE_ENCODERS, TEXT_ENCODERS
from cirlab.encoders.prefix import IMAGE_ENCODER_PREFIXES, TEXT_ENCODER_PREFIXES
from cirlab.models import MODELS, ModelConfig, build_model
from cirlab.models.base import ModelOptions
from cirlab.models.crn import CRNOptions
from cirlab.training import TrainConfig
from cirlab.training.run_dir import load_config_file
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import describe_options, normalize_options, option, parse_bool, parse_options


@dataclasses.dataclass
class Example:
    flag: bool = option(False, "a switch")
    count: int = option(3, "a count")
    scale: float = option(1.0, "a scale")
    mode: Literal["a", "b"] = option("a", "a choice")
    stages: list[int] = option([1, 2], "a list")
    table: dict[str, float] = option({}, "a mapping")
    limit: int | None = option(None, "an optional number")


def _components() -> list[tuple[str, str, type]]:
    """(kind, name, Options) of every registered model, encoder (plain and prefixed) and dataset."""
    out = [("model", n, MODELS.get(n).Options) for n in MODELS.names()]
    out += [("image encoder", n, IMAGE_ENCODERS.get(n).Options) for n in IMAGE_ENCODERS.names()]
    out += [("image encoder", f"{p}:x", IMAGE_ENCODER_PREFIXES.get(p).Options) for p in IMAGE_ENCODER_PREFIXES.names()]
    out += [("text encoder", n, TEXT_ENCODERS.get(n).Options) for n in TEXT_ENCODERS.names()]
    out += [("text encoder", f"{p}:x", TEXT_ENCODER_PREFIXES.get(p).Options) for p in TEXT_ENCODER_PREFIXES.names()]
    out += [("dataset", n, DATASETS.get(n).Options) for n in DATASETS.names()]
    return out


# the boolean reader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("word, expected", [("true", True), ("on", True), ("YES", True), ("1", True), (1, True),
                                            (True, True), ("false", False), ("off", False), ("No", False),
                                            (" 0 ", False), (0, False), (False, False)])
def test_parse_bool_reads_the_usual_words(word: Any, expected: bool) -> None:
    assert parse_bool(word) is expected


@pytest.mark.parametrize("word", ["garbage", "", "none", "2", 2, 0.5, None, "truthy"])
def test_parse_bool_refuses_anything_else(word: Any) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected true or false"):
        parse_bool(word)


def test_every_boolean_option_of_every_component_reads_the_same_way() -> None:
    """The six readers that disagreed ("garbage" was true in one, "on" false in another) are one."""
    checked = 0
    for kind, name, cls in _components():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if hints[f.name] is not bool:
                continue
            assert getattr(parse_options(cls, {f.name: "on"}, kind, name), f.name) is True
            assert getattr(parse_options(cls, {f.name: "off"}, kind, name), f.name) is False
            with pytest.raises(CirlabError, match=f"{f.name} must be true or false"):
                parse_options(cls, {f.name: "garbage"}, kind, name)
            checked += 1
    assert checked >= 10  # use_rho, word_mask, glove, project, pretrained, preload, skip_missing, ...


# the parser -----------------------------------------------------------------------------------------------------
def test_strings_and_json_values_convert_to_the_annotations() -> None:
    from_cli = parse_options(Example, {"flag": "yes", "count": "8", "scale": "7", "mode": "b", "stages": "3,4",
                                       "table": '{"x": 2}', "limit": "null"}, "model", "example")
    assert from_cli == Example(flag=True, count=8, scale=7.0, mode="b", stages=[3, 4], table={"x": 2.0}, limit=None)
    assert isinstance(from_cli.scale, float) and isinstance(from_cli.table["x"], float)
    from_json = parse_options(Example, {"flag": 1, "count": 8, "scale": 7, "stages": [3, 4], "limit": 5},
                              "model", "example")
    assert (from_json.flag, from_json.count, from_json.scale, from_json.stages, from_json.limit) == (True, 8, 7.0,
                                                                                                     [3, 4], 5)
    assert parse_options(Example, {"stages": "[5, 6]"}, "model", "example").stages == [5, 6]
    assert parse_options(Example, None, "model", "example") == Example()
    assert Example().stages is not Example().stages  # list defaults are copied per instance


@pytest.mark.parametrize("raw, needle", [
    ({"count": "eight"}, "example: model option count must be an integer, not 'eight'"),
    ({"count": True}, "count must be an integer"),
    ({"scale": "fast"}, "scale must be a number"),
    ({"mode": "c"}, "mode must be one of a, b, not 'c'"),
    ({"stages": "1,x"}, r"stages\[1\] must be an integer"),
    ({"table": "[1]"}, "table must be a JSON object"),
    ({"limit": "many"}, "limit must be an integer or null"),
])
def test_bad_values_are_one_line_naming_the_option(raw: dict[str, Any], needle: str) -> None:
    with pytest.raises(CirlabError, match=needle) as err:
        parse_options(Example, raw, "model", "example")
    assert "\n" not in str(err.value)


def test_unknown_keys_are_refused_listing_the_known_ones() -> None:
    with pytest.raises(CirlabError) as err:
        parse_options(Example, {"foo": 1, "bar": 2, "count": 1}, "model", "example")
    assert str(err.value) == ("example: unknown model options 'bar', 'foo'; known: count, flag, limit, mode, scale, "
                              "stages, table")
    with pytest.raises(CirlabError, match="unknown image encoder option 'width'; known: none"):
        build_model(tiny_model_config("tirg", image_encoder="resnet18", image_options={"width": 8}), texts=["a"])


def test_normalized_options_keep_only_the_given_keys_as_json() -> None:
    assert normalize_options(Example, {"flag": "on", "stages": "1,2"}, "model", "x") == {"flag": True,
                                                                                          "stages": [1, 2]}
    assert normalize_options(CRNOptions, {}, "model", "crn") == {}


# every registered component -------------------------------------------------------------------------------------
def test_every_registered_component_declares_a_typed_options_dataclass() -> None:
    components = _components()
    assert {"crn", "tirg", "combiner", "small_cnn", "resnet18", "lstm", "crn_lstm", "minilm", "hf:x", "css",
            "fashioniq", "cirr"} <= {name for _, name, _ in components}
    for kind, name, cls in components:
        assert dataclasses.is_dataclass(cls), (kind, name)
        rows = describe_options(cls)
        assert all(text for *_, text in rows), f"{kind} {name}: every option needs a help text"
        if kind == "model":
            assert issubclass(cls, ModelOptions), name
        with pytest.raises(CirlabError, match=f"{name}: unknown {kind} option 'no_such_option'"):
            parse_options(cls, {"no_such_option": 1}, kind, name)


@pytest.mark.parametrize("name", MODELS.names())
def test_build_model_refuses_a_misspelt_model_option_before_building(name: str) -> None:
    with pytest.raises(CirlabError, match=f"{name}: unknown model option 'colour'; known: .*norm_scale"):
        build_model(tiny_model_config(name, options={"colour": 1}), texts=["a"])


def test_typed_model_options_reach_the_model() -> None:
    model = build_model(tiny_model_config("composeae", options={"use_rho": "off", "norm_scale": "2"}), texts=["a"])
    assert model.options.use_rho is False and model.rho is None and model.rho_conv is not None
    assert float(model.norm_scale.detach()) == 2.0
    combiner = build_model(tiny_model_config("combiner", options={"proj_dim": "16"}), texts=["a"])
    assert combiner.text_projection_layer.out_features == 16 and combiner.combiner_layer.out_features == 8 * 32
    assert float(combiner.norm_scale) == 100.0  # the Combiner's own default
    with pytest.raises(CirlabError, match="film_san: model option mask must be one of none, paper, not 'eq11'"):
        build_model(tiny_model_config("film_san", options={"mask": "eq11"}), texts=["a"])


def test_dataset_options_are_typed_and_checked_without_the_data(tmp_path: Path, tiny_css: Path) -> None:
    with pytest.raises(CirlabError, match="fashioniq: unknown dataset option 'category'; known: caption_style, "
                                          "categories, gallery_protocol, skip_missing"):
        build_dataset("fashioniq", tmp_path / "absent", "val", category="dress")
    with pytest.raises(CirlabError, match="css: dataset option preload must be true or false"):
        build_dataset("css", tiny_css, "test", preload="maybe")
    ds = build_dataset("css", tiny_css, "test", preload="off", sampling="independent")
    assert ds.options.preload is False and ds._cache is None and ds.sampling == "independent"


# the CLI --------------------------------------------------------------------------------------------------------
def test_list_options_prints_every_section_with_types_defaults_and_help(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # no data there: listing needs none and writes nothing
    assert main(["train", "--model", "crn", "--text-encoder", "crn_lstm", "--list-options"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    for section in ("model crn", "image encoder small_cnn", "text encoder crn_lstm", "dataset css"):
        assert any(line.startswith(section) for line in lines), section
    local_t = next(line for line in lines if line.split()[:1] == ["local_t"])
    assert local_t.split()[1:3] == ["float", "7.0"] and "temperature of the local attention" in local_t
    image_map = next(line for line in lines if line.split()[:1] == ["image_map"])
    assert image_map.split()[1:3] == ["pooled|spatial", "pooled"]
    assert any(line.split()[:3] == ["word_dim", "int", "768"] for line in lines)  # crn_lstm's
    assert any(line.split()[:3] == ["sampling", "paired|independent", "paired"] for line in lines)  # css
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, message", [
    (["--model-option", "foo=bar"],
     "tirg: unknown model option 'foo'; known: loss_weights, lr_mults, norm_scale"),
    (["--model", "crn", "--model-option", "word_mask=garbage"],
     "crn: model option word_mask must be true or false (true/false, 1/0, yes/no, on/off), not 'garbage'"),
    (["--image-option", "widht=4"], "small_cnn: unknown image encoder option 'widht'; known: grid, pool, width"),
    (["--text-option", "glove=sometimes"], "lstm: text encoder option glove must be true or false"),
    (["--dataset-option", "render=3d"], "css: dataset option render must be one of auto, png, 2d, not '3d'"),
    (["--set", "model.options.colour=1"], "tirg: unknown model option 'colour'"),
])
def test_a_bad_option_is_one_line_exit_2_and_creates_no_run_folder(
        flags: list[str], message: str, tiny_css: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The hardening issue's reproduction: `--model-option foo=bar` used to be accepted silently."""
    runs = tmp_path / "runs"
    base = ["train", "--data-root", str(tiny_css), "--log-dir", str(runs), "--iters", "1", "--no-eval"]
    if flags[0] == "--set":
        base = ["train", "--recipe", "demo", "--data-root", str(tiny_css), "--log-dir", str(runs)]
    assert main([*base, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"cirlab: error: {message}"), err
    assert not runs.exists()


def test_checked_options_are_stored_converted() -> None:
    config = TrainConfig(model=tiny_model_config("crn", options={"word_mask": "on", "aggregate_stages": "1,2"}),
                         dataset_options={"preload": "off"})
    check_run_options(config)
    assert config.model.options == {"word_mask": True, "aggregate_stages": [1, 2]}
    assert config.dataset_options == {"preload": False}
    assert config.model.text_options == {"word_dim": 16, "hidden_dim": 32}


# old run configs ------------------------------------------------------------------------------------------------
def _old_config(tmp_path: Path, text_weights: str) -> Path:
    """A config.json as cirlab wrote it before the typed options: with `text_weights`, JSON-guessed option values."""
    train = TrainConfig(model=tiny_model_config("crn", options={"local_t": 7, "word_mask": 0,
                                                                "loss_weights": {"class": 2}}),
                        dataset_options={"preload": "false", "sampling": "paired"}).to_dict()
    train["model"]["text_weights"] = text_weights
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"cirlab_version": "0.1.0", "train": train}))
    return path


def test_an_old_config_json_still_loads_and_builds(tmp_path: Path) -> None:
    config = load_config_file(_old_config(tmp_path, ""))
    assert not hasattr(config.model, "text_weights")
    model = build_model(config.model, texts=["add a red cube", "remove it"])
    assert model.options.local_t == 7.0 and model.options.word_mask is False
    assert model.loss_weights["class"] == 2.0


def test_an_old_config_that_set_a_removed_field_is_refused(tmp_path: Path) -> None:
    path = _old_config(tmp_path, "text.pt")
    with pytest.raises(CirlabError, match=r"train\.model\.text_weights is no longer supported"):
        load_config_file(path)
    assert ModelConfig.from_dict({"name": "tirg"}).name == "tirg"
