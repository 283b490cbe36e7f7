"""The seed repositories' README training commands, verbatim after `cirlab train`, on tiny fixtures in each
dataset's real format: each resolves to what its flags meant in its repository, and each runs.

The runs add `--iters 1 --no-eval` (how a user shortens any of them) and, to fit a test budget, a small batch and
image size; the resolution tests check the configuration the command itself gives, without those additions.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
from test_datasets_fashion200k import make_fashion200k
from test_datasets_fashioniq import make_fashioniq
from test_datasets_mitstates import make_mitstates
from test_datasets_shoes import make_shoes

from cirlab.cli import _seed_flags
from cirlab.cli.main import build_parser, main
from cirlab.cli.train import apply_epochs, config_from_args
from cirlab.training.run_dir import open_dataset

MIT = ("--dataset=mitstates --dataset_path=../data/mitstates/ --model=tirg --loss=soft_triplet "
       "--learning_rate_decay_frequency=50000 --num_iters=160000 --weight_decay=5e-5 "
       "--comment=mitstates_tirg_original --log_dir ../logs/mitstates/")
COMMANDS: dict[str, str] = {
    "tirg_f200k_concat": "--dataset=fashion200k --dataset_path=./Fashion200k --num_iters=160000 --model=concat "
                         "--loss=batch_based_classification --learning_rate_decay_frequency=50000 "
                         "--comment=f200k_concat",
    "tirg_f200k_tirg": "--dataset=fashion200k --dataset_path=./Fashion200k --num_iters=160000 --model=tirg "
                       "--loss=batch_based_classification --learning_rate_decay_frequency=50000 "
                       "--comment=f200k_tirg --loader_num_workers=0",
    "composeae_mit_tirg": MIT,
    "composeae_mit_tirg_bert": MIT + " --use_bert True",
    "composeae_mit_tirg_complete": MIT + " --use_complete_text_query True",
    "composeae_f200k": "--dataset=fashion200k --dataset_path=../data/fashion200k/ --model=composeAE "
                       "--loss=batch_based_classification --learning_rate_decay_frequency=50000 --num_iters=160000 "
                       "--use_bert True --use_complete_text_query True --weight_decay=5e-5 "
                       "--comment=fashion200k_composeAE --log_dir ../logs/fashion200k/",
    "composeae_fiq_realspace": "--dataset=fashionIQ --dataset_path=../data/fashionIQ/ --model=RealSpaceConcatAE "
                               "--loss=batch_based_classification --learning_rate_decay_frequency=8000 "
                               "--num_iters=100000 --use_bert True --use_complete_text_query True "
                               "--comment=fashionIQ_RealSpaceConcatAE --log_dir ../logs/fashionIQ/",
    "crn_fiq_dress": "--dataset fashioniq --name dress --max_decay_epoch 20 --img_weight 1.0 --class_weight 1.0 "
                     "--mul_kl_weight 1.0 --model_dir ./dress --num_epochs 50",
    "crn_shoes": "--dataset shoes --seed 6195 --max_decay_epoch 30 --img_weight 1.0 --class_weight 1.0 "
                 "--mul_kl_weight 1.0 --model_dir ./shoes --num_epochs 50",
    "crn_f200k": "--dataset fashion200k --seed 6195 --num 1 --img_weight 1.0 --class_weight 1.0 --mul_kl_weight 1.0 "
                 "--model_dir ./fashion200k --num_epochs 40",
}

#: Where each command's data lives relative to the working directory `work/`, and how to build it.
DATA: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "./Fashion200k": ("work/Fashion200k", make_fashion200k),
    "../data/mitstates/": ("data/mitstates", make_mitstates),
    "../data/fashion200k/": ("data/fashion200k", make_fashion200k),
    "../data/fashionIQ/": ("data/fashionIQ", make_fashioniq),
}
CRN_DATA = {"fashioniq": make_fashioniq, "shoes": make_shoes, "fashion200k": make_fashion200k}


def words(name: str) -> list[str]:
    return shlex.split(COMMANDS[name])


def crn_dataset(name: str) -> str:
    return words(name)[words(name).index("--dataset") + 1]


def prepare(name: str, tmp_path: Path) -> list[str]:
    """Build the command's data set where its paths point; returns the full `cirlab train ...` argv."""
    (tmp_path / "work").mkdir()
    if name.startswith("crn_"):
        root = CRN_DATA[crn_dataset(name)](tmp_path / "crn_data")
        return ["train", "--model", "crn", *words(name), "--data-root", str(root)]
    path = next(w.split("=", 1)[1] for w in words(name) if w.startswith("--dataset_path="))
    folder, make = DATA[path]
    make(tmp_path / folder)
    return ["train", *words(name)]


def resolved(argv: list[str]):
    args = build_parser().parse_args(argv)
    seed = _seed_flags.resolve(args)
    return config_from_args(args, seed), seed


@pytest.mark.parametrize("name", list(COMMANDS))
def test_seed_command_resolves_to_its_repository_meaning(name: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    argv = prepare(name, tmp_path)
    monkeypatch.chdir(tmp_path / "work")
    config, seed = resolved(argv)
    assert config.model.image_encoder == "resnet18"  # both releases train torchvision's ResNet-18 trunk
    if name.startswith("crn_"):
        apply_epochs(config, seed, explicit_iters=False)
        assert seed.dialect == "crn" and config.model.name == "crn"
        assert (config.optimizer, config.lr, config.adam_eps, config.weight_decay) == ("adam", 3e-5, 1e-8, 1e-6)
        assert config.batch_size == 16 and config.trunk_lr_mult() == 1.0
        assert config.loss == "batch_based_classification" and config.model.embed_dim == 2048
        assert (config.model.text_encoder, config.model.text_options) == ("crn_lstm", {"word_dim": 768,
                                                                                        "hidden_dim": 1024})
        epochs = int(words(name)[words(name).index("--num_epochs") + 1])
        samples = open_dataset(config, "train").epoch_size()
        per_epoch = max(samples // 16, 1)  # drop_last loaders: full batches of 16 per epoch
        assert config.iters == epochs * per_epoch and config.epochs == epochs
        assert config.seed == (599 if "--seed" not in words(name) else 6195)
        assert config.model.options["loss_weights"] == {"class": 1.0, "img": 1.0, "mul_kl": 1.0}
        assert config.augment == ("none" if crn_dataset(name) == "fashion200k" else "crop_flip")
        # CRN decays x0.1 every 20 epochs while epoch < --max_decay_epoch (default 40)
        assert (config.lr_decay_every, config.lr_decay) == (20 * per_epoch, 0.1)
        max_decay = {"crn_fiq_dress": 20, "crn_shoes": 30, "crn_f200k": 40}[name]
        assert config.lr_decay_until == max_decay * per_epoch
        if crn_dataset(name) == "fashioniq":
            assert config.dataset_options == {"caption_style": "crn", "categories": "dress"}
        if name == "crn_f200k":
            assert any("--num 1" in note for note in seed.notes)
        return
    assert seed.dialect == "main.py"
    flags = dict(w[2:].split("=", 1) for w in words(name) if w.startswith("--") and "=" in w)
    assert config.iters == int(flags["num_iters"])
    assert config.lr_decay_every == int(flags["learning_rate_decay_frequency"]) and config.lr_decay == 0.1
    assert config.loss == flags["loss"] and config.lr == 0.01 and config.batch_size == 32
    assert config.weight_decay == float(flags.get("weight_decay", 1e-6))
    assert config.trunk_lr_mult() == 0.1  # ImageNet trunk at 0.1x on real images
    assert config.augment == "none"  # resize + centre crop, no flips
    assert config.model.name == {"concat": "concat", "tirg": "tirg", "composeAE": "composeae",
                                 "RealSpaceConcatAE": "realspace_concat_ae"}[flags["model"]]
    bert = "--use_bert" in words(name)
    assert (config.model.text_encoder, config.model.freeze_text) == (("minilm", True) if bert else ("lstm", False))
    complete = "--use_complete_text_query" in words(name) and flags["dataset"] != "fashionIQ"  # no-op on FashionIQ
    assert config.dataset_options.get("complete_text_query", False) == complete
    if flags["dataset"] == "fashionIQ":
        assert config.dataset == "fashioniq" and config.dataset_options["caption_style"] == "composeae"
    assert config.workers == (0 if "loader_num_workers" in flags else config.workers)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_seed_command_runs(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    argv = prepare(name, tmp_path)
    monkeypatch.chdir(tmp_path / "work")
    small = ["--batch-size", "2", "--image-size", "32", "--embed-dim", "32"]
    assert main([*argv, "--iters", "1", "--no-eval", *small]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("note: resnet18 starts from random weights"), out[:2]
    config_line = next(line for line in out if line.startswith("configuration: "))
    printed = json.loads(config_line[len("configuration: "):])
    assert printed["iters"] == 1 and printed["model"]["image_encoder"] == "resnet18"
    run_dir = Path(next(line for line in out if line.startswith("run directory: ")).split(": ", 1)[1])
    saved = json.loads((run_dir / "config.json").read_text())["train"]
    assert saved == printed
    assert (run_dir / "model.safetensors").is_file()
    if name.startswith("crn_"):
        model_dir = words(name)[words(name).index("--model_dir") + 1]
        assert run_dir.resolve() == (tmp_path / "work" / model_dir).resolve()


def test_unhonourable_seed_flags_are_one_line_errors(tiny_css: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = [
        (["--model", "crn", "--dataset", "shoes", "--img_encoder", "swin_large_patch4_window7_224_in22k"],
         "--img_encoder: timm models cannot be loaded here"),
        (["--dataset", "shoes", "--num_epochs", "3"], "yan9qu/crn's train.py flags need `--model crn`"),
        (["--dataset_path", str(tiny_css), "--test_only", "True"], "--test_only: not supported"),
        (["--dataset_path", str(tiny_css), "--use_bert", "maybe"], "expected true or false"),
    ]
    for argv, needle in cases:
        assert exit_code(["train", *argv, "--no-eval", "--iters", "1"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def exit_code(argv: list[str]) -> int:
    """main()'s status, also for usage errors that argparse reports by exiting."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_later_iters_overrides_epochs_and_use_bert_false_is_false(tmp_path: Path) -> None:
    root = make_shoes(tmp_path / "shoes")
    argv = ["train", "--model", "crn", *words("crn_shoes"), "--data-root", str(root), "--iters", "7"]
    config, seed = resolved(argv)
    apply_epochs(config, seed, explicit_iters=True)
    assert config.iters == 7 and config.epochs == 0 and any("--iters 7 overrides" in n for n in seed.notes)
    config, _ = resolved(["train", "--dataset_path", str(root), "--use_bert", "False"])
    assert config.model.text_encoder == "lstm"
