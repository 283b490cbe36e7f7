"""The Python API (`import cirlab`), used only through its public names: train from a recipe, load the run, compose
and embed PIL images, evaluate exactly as `cirlab eval --json` does, and model folders that load anywhere."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import cirlab
from cirlab.cli.main import main

TINY_MODEL = {"embed_dim": 32, "text_dim": 32, "image_options": {"width": 8},
              "text_options": {"word_dim": 16, "hidden_dim": 32}}


@pytest.fixture(scope="module")
def run_dir(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = cirlab.recipe("demo", data_root=tiny_css, iters=3, batch_size=8, device="cpu", model=TINY_MODEL)
    out = tmp_path_factory.mktemp("api") / "run"
    summary = cirlab.train(cfg, out=out, evaluate=False, progress=False)
    assert summary["iterations"] == 3 and not summary["interrupted"]
    return out


def images(css_root: Path, count: int) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in sorted((css_root / "images").glob("css_test_*.png"))[:count]]


def test_the_public_names_exist_and_list_the_registries() -> None:
    for name in ("load", "build_dataset", "evaluate", "recipe", "train", "list_models", "list_recipes",
                 "list_datasets", "Pipeline"):
        assert name in cirlab.__all__ and callable(getattr(cirlab, name)), name
    assert {"tirg", "combiner", "crn", "composeae"} <= set(cirlab.list_models())
    assert {"css", "fashioniq", "cirr", "shoes"} <= set(cirlab.list_datasets())
    assert {"demo", "tirg_css", "combiner_fashioniq"} <= set(cirlab.list_recipes())
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        cirlab.nope  # noqa: B018


def test_importing_cirlab_loads_no_torch() -> None:
    # the `cirlab` command sets OpenMP's environment before torch is imported; `import cirlab` must not import it
    code = "import sys, cirlab; print('torch' in sys.modules, cirlab.__version__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", cirlab.__version__]


def test_compose_and_embed_give_unit_vectors_in_one_space(run_dir: Path, tiny_css: Path) -> None:
    pipe = cirlab.load(run_dir, device="cpu")
    pictures = images(tiny_css, 5)
    q = pipe.compose(pictures[:3], ["add red cube", "remove blue sphere", "make it green"])
    g = pipe.embed(pictures)
    assert q.shape == (3, 32) and g.shape == (5, 32) and q.device == g.device == pipe.device
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(5))
    # batching does not change a vector: one at a time equals all at once
    torch.testing.assert_close(pipe.embed(pictures[2:3])[0], g[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(pipe.compose([pictures[1]], ["remove blue sphere"])[0], q[1], atol=1e-5, rtol=0)
    with pytest.raises(cirlab.CirlabError, match="same length"):
        pipe.compose(pictures[:2], ["only one text"])


def test_evaluate_equals_the_eval_command(run_dir: Path, tiny_css: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pipe = cirlab.load(run_dir)
    ds = cirlab.build_dataset("css", tiny_css, "test")
    result = cirlab.evaluate(pipe, ds)
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    command = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "recall@1" in result and "recall@10" in result
    assert {k: v for k, v in result.items()} == command
    assert (result["dataset"], result["split"], result["model"]) == ("css", "test", "tirg")


def test_a_model_folder_loads_anywhere_with_its_preprocessing(run_dir: Path, tiny_css: Path, tmp_path: Path) -> None:
    pipe = cirlab.load(run_dir)
    folder = tmp_path / "folder"
    pipe.save_pretrained(folder)
    config = json.loads((folder / "config.json").read_text())
    assert set(config) == {"cirlab_version", "model", "preprocess"}  # no train settings, no dataset
    assert config["preprocess"] == {"size": pipe.preprocess.size, "pad": "none", "mean": list(pipe.preprocess.mean),
                                    "std": list(pipe.preprocess.std)}
    moved = tmp_path / "elsewhere" / "model"
    shutil.move(str(folder), moved)
    again = cirlab.load(moved)
    assert again.run is None and again.preprocess == pipe.preprocess
    pictures = images(tiny_css, 4)
    torch.testing.assert_close(again.embed(pictures), pipe.embed(pictures), rtol=0, atol=0)
    torch.testing.assert_close(again.compose(pictures, ["a"] * 4), pipe.compose(pictures, ["a"] * 4), rtol=0, atol=0)
    with pytest.raises(cirlab.CirlabError, match="it names no dataset"):
        again.open_dataset("test")


def test_a_run_saved_before_model_folders_still_loads(run_dir: Path, tiny_css: Path, tmp_path: Path) -> None:
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    config = json.loads((old / "config.json").read_text())
    assert config["model"] == config["train"]["model"] and "preprocess" in config
    (old / "config.json").write_text(json.dumps({"cirlab_version": "0.1.0", "train": config["train"]}))
    pipe, legacy = cirlab.load(run_dir), cirlab.load(old)
    assert legacy.preprocess == pipe.preprocess  # derived from the train config and the dataset class
    pictures = images(tiny_css, 3)
    torch.testing.assert_close(legacy.embed(pictures), pipe.embed(pictures), rtol=0, atol=0)
    config["train"]["model"]["embed_dim"] = 64
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(cirlab.CirlabError, match="'model' and 'train.model' differ"):
        cirlab.load(old)
    config["train"]["model"]["embed_dim"] = 32
    config["preprocess"]["size"] = -4
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(cirlab.CirlabError, match=r"config.json: preprocess: size must be a non-negative integer"):
        cirlab.load(old)


def test_inputs_follow_the_model_to_its_device(run_dir: Path, tiny_css: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = cirlab.load(run_dir)
    seen = []

    def embed_target(pixels: torch.Tensor) -> torch.Tensor:  # records where the pipeline sent its inputs
        seen.append(pixels.device)
        return torch.ones(len(pixels), pipe.embed_dim)

    monkeypatch.setattr(pipe.model, "embed_target", embed_target)
    pipe.model.to("meta")  # moved after loading, as `run.model.cuda()` did (meta: a device this machine has)
    out = pipe.embed(images(tiny_css, 2))
    assert seen == [torch.device("meta")] and pipe.device == out.device == torch.device("meta")
    with pytest.raises(cirlab.CirlabError, match="CUDA is not available|this machine has"):
        pipe.to(f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_model_moved_to_cuda_composes_there(run_dir: Path, tiny_css: Path) -> None:
    pipe = cirlab.load(run_dir)
    pictures = images(tiny_css, 3)
    on_cpu = pipe.compose(pictures, ["a", "b", "c"])
    pipe.model.cuda()  # the newcomer's move: the pipeline's inputs follow the model
    on_gpu = pipe.compose(pictures, ["a", "b", "c"])
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-4, rtol=0)
    assert cirlab.load(run_dir, device="cuda").embed(pictures).device.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_eval_runs_on_cuda(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--json"]) == 0
    on_cpu = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["eval", str(run_dir), "--device", "cuda", "--json"]) == 0
    on_gpu = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert on_gpu["queries"] == on_cpu["queries"]
    assert all(abs(on_gpu[k] - on_cpu[k]) <= 0.05 for k in on_cpu if k.startswith("recall@"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_eval_on_a_missing_gpu_is_one_error_line(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--device", "cuda"]) == 2
    assert capsys.readouterr().err.strip() == "cirlab: error: --device cuda: CUDA is not available on this machine"


def test_every_command_that_runs_a_model_takes_device() -> None:
    from cirlab.cli.main import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    for name in ("eval", "index", "query", "serve", "interactive-eval", "demo", "submit-cirr", "train"):
        assert "--device" in commands[name]._option_string_actions, name  # noqa: SLF001
