"""`cirlab train`: train a composition model into a run directory.

The seed repositories' README commands run as written after `cirlab train` (see `cirlab.cli._seed_flags`): the words
after `python main.py` of google/tirg or ecom-research/ComposeAE, or after `python train.py` of yan9qu/crn (placed
after `cirlab train --model crn --data-root DIR`). Every run prints the configuration it resolved to before training.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from cirlab import api
from cirlab.cli import _seed_flags as seed_flags
from cirlab.cli._options import check_run_options, options_table, parse_key_values, print_json_line
from cirlab.datasets import DATASETS
from cirlab.inference import distributed
from cirlab.losses import LOSSES
from cirlab.models import MODELS, ModelConfig
from cirlab.training import TrainConfig, load_config
from cirlab.training.checkpoint import has_checkpoint
from cirlab.training.recipes import apply_overrides, load_recipe
from cirlab.training.run_dir import check_new_run_dir, load_config_file, open_dataset
from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import add_threads_argument

DEFAULTS = TrainConfig()
#: Flags whose default is "not given" (None), so that a seed command's own defaults can fill them.
LAYERED = ("loss", "iters", "batch_size", "lr", "lr_decay_every", "lr_decay", "weight_decay", "momentum", "seed",
           "workers", "image_size", "optimizer", "augment", "log_every", "precision", "compile")


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that choose and shape the model (shared with other commands that build models)."""
    m = ModelConfig()
    p.add_argument("--model", default=m.name, help=f"composition model ({', '.join(MODELS.names())})")
    p.add_argument("--image-encoder", default=None, help=f"image encoder name (default {m.image_encoder}; "
                                                        "resnet18 for a seed repository's command)")
    p.add_argument("--text-encoder", default=m.text_encoder, help="text encoder name")
    p.add_argument("--embed-dim", type=int, default=None, help=f"embedding size (default {m.embed_dim})")
    p.add_argument("--text-dim", type=int, default=m.text_dim)
    p.add_argument("--image-weights", default="", help="local state dict for the image trunk (torchvision format)")
    p.add_argument("--freeze-image", action="store_true", help="keep the image encoder fixed")
    p.add_argument("--freeze-text", action="store_true", help="keep the text encoder fixed")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model-specific option")
    p.add_argument("--image-option", action="append", metavar="KEY=VALUE", help="image-encoder option")
    p.add_argument("--text-option", action="append", metavar="KEY=VALUE", help="text-encoder option")
    p.add_argument("--loss-weight", action="append", metavar="NAME=WEIGHT", help="weight of a loss term")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--recipe", default=None, help="start from a shipped recipe (`cirlab recipes` lists them)")
    p.add_argument("--config", type=Path, default=None, help="start from a run's config.json (reruns it exactly)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", dest="overrides",
                   help="override a recipe/config setting, e.g. iters=5 or model.embed_dim=256")
    p.add_argument("--dataset", default=DEFAULTS.dataset, help=f"dataset ({', '.join(DATASETS.names())})")
    p.add_argument("--data-root", dest="data_root", default=None, help=f"data folder (default {DEFAULTS.data_root})")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="dataset-specific option")
    p.add_argument("--skip-missing", action="store_true", help="drop pairs/queries whose images are missing")
    add_model_arguments(p)
    p.add_argument("--loss", default=None, help=f"base loss ({', '.join(LOSSES.names())}; default {DEFAULTS.loss})")
    p.add_argument("--optimizer", default=None, choices=["sgd", "adam", "adamw"])
    p.add_argument("--iters", type=int, default=None, help=f"training iterations (default {DEFAULTS.iters}); "
                                                          "overrides a seed command's --num_iters/--num_epochs")
    p.add_argument("--batch-size", dest="batch_size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help=f"learning rate (default {DEFAULTS.lr})")
    p.add_argument("--lr-decay-every", dest="lr_decay_every", type=int, default=None,
                   help="iterations between lr decays (default 0: never, as google/tirg)")
    p.add_argument("--lr-decay", type=float, default=None, help=f"decay factor (default {DEFAULTS.lr_decay})")
    p.add_argument("--lr-decay-until", type=int, default=DEFAULTS.lr_decay_until,
                   help="no lr decay at or after this iteration (0: no limit)")
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--momentum", type=float, default=None)
    p.add_argument("--backbone-lr-mult", type=float, default=None,
                   help="lr multiplier of the image trunk (default: 1.0 on CSS, 0.1 on real images, as google/tirg)")
    p.add_argument("--augment", default=None, choices=["none", "crop_flip"],
                   help="training augmentation (default none: resize + centre crop, as the releases)")
    p.add_argument("--grad-clip", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every)
    p.add_argument("--log-every", dest="log_every", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="data-loading worker processes")
    p.add_argument("--image-size", type=int, default=None, help="input side length (0: dataset default)")
    p.add_argument("--pad", default="none", choices=["none", "target_pad", "square_pad"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default=None, choices=["fp32", "bf16", "fp16"],
                   help="autocast of the forward passes (default fp32; fp16 on CUDA only, with a gradient scaler)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the image path and composition head (eager, with a warning, if it fails)")
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this much training time")
    p.add_argument("--distinct-images", action="store_true",
                   help="encode each distinct image of a batch once (paired sampling repeats sources; same training "
                        "up to float rounding, opt-in; see cirlab.training.distinct)")
    p.add_argument("--feature-cache", action="store_true",
                   help="frozen encoders: encode every image and text once into the run directory, train on that")
    p.add_argument("--eval-split", default=None, help="split evaluated during/after training")
    p.add_argument("--out", default=None, type=Path, help="run directory (default: LOG_DIR/<time>_<comment>)")
    p.add_argument("--log-dir", dest="log_dir", default=None, help="parent of generated run dirs (default runs)")
    p.add_argument("--comment", default=None, help="suffix of the generated run directory name")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.add_argument("--list-options", action="store_true",
                   help="print the options of the chosen model, encoders and dataset (name, type, default, help)")
    seed_flags.add_seed_arguments(p)
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def model_config_from_args(args: argparse.Namespace, seed: seed_flags.SeedRun | None = None) -> ModelConfig:
    seed = seed or seed_flags.SeedRun()
    options = {**seed.model_options, **parse_key_values(args.model_option, "--model-option")}
    weights = {**seed.loss_weights, **parse_key_values(args.loss_weight, "--loss-weight")}
    if weights:
        options["loss_weights"] = weights
    model = seed_flags.SEED_MODELS.get(args.model, args.model)
    MODELS.get(model)
    m = ModelConfig()
    settings: dict[str, Any] = {"image_encoder": m.image_encoder, "embed_dim": m.embed_dim,
                                "text_encoder": args.text_encoder, "text_dim": args.text_dim,
                                "freeze_text": args.freeze_text}
    text_given = (args.text_encoder, args.text_dim, args.freeze_text) != (m.text_encoder, m.text_dim, False)
    settings.update({k: v for k, v in seed.model.items()
                     if not (text_given and k in ("text_encoder", "text_dim", "freeze_text"))})  # explicit wins
    if args.image_encoder is not None:
        settings["image_encoder"] = args.image_encoder
    if args.embed_dim is not None:
        settings["embed_dim"] = args.embed_dim
    text_options = {**settings.pop("text_options", {}), **parse_key_values(args.text_option, "--text-option")}
    if settings["text_encoder"] == "minilm":
        text_options.setdefault("project", False)
    return ModelConfig(name=model, image_weights=args.image_weights,
                       image_options=parse_key_values(args.image_option, "--image-option"), text_options=text_options,
                       options=options, freeze_image=args.freeze_image, **settings)


def config_from_args(args: argparse.Namespace, seed: seed_flags.SeedRun | None = None) -> TrainConfig:
    """Cirlab's defaults, then the seed command's (its repository's defaults and flags), then explicit flags."""
    seed = seed or seed_flags.SeedRun()
    dataset = seed_flags.SEED_DATASETS.get(args.dataset, args.dataset)
    DATASETS.get(dataset)
    known = {f.name for f in fields(TrainConfig)}
    settings: dict[str, Any] = {k: v for k, v in seed.train.items() if k in known}
    settings.update({k: getattr(args, k) for k in LAYERED if getattr(args, k) is not None})
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root)
    if args.backbone_lr_mult is not None:
        settings["backbone_lr_mult"] = args.backbone_lr_mult
    for flag in ("iters", "batch_size"):
        if settings.get(flag, 1) <= 0:
            raise CirlabError(f"--{flag.replace('_', '-')} must be positive")
    if settings.get("lr", 1.0) <= 0:
        raise CirlabError("--lr must be positive")
    LOSSES.get(settings.get("loss", DEFAULTS.loss))
    return TrainConfig(
        dataset=dataset, dataset_options={**seed.dataset_options, **dataset_options_from_args(args)},
        eval_split=args.eval_split or DATASETS.get(dataset).eval_split,  # val for FashionIQ and CIRR
        model=model_config_from_args(args, seed), grad_clip=args.grad_clip,
        eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, pad=args.pad, minutes=args.minutes,
        comment=args.comment or seed.train.get("comment", ""), device=args.device, feature_cache=args.feature_cache,
        distinct_images=args.distinct_images,
        lr_decay_until=args.lr_decay_until, **settings)


def config_from_file_args(args: argparse.Namespace) -> TrainConfig:
    """`--recipe NAME` or `--config FILE`, then `--data-root`, the explicit run-shaping flags and `--set`."""
    if args.recipe and args.config:
        raise CirlabError("--recipe and --config are alternatives; give one")
    shaping = ("image_encoder", "embed_dim", "model_option", "image_option", "text_option", "loss_weight",
               "dataset_option", "image_weights")
    given = {"--model": args.model != ModelConfig().name, "--dataset": args.dataset != DEFAULTS.dataset,
             **{"--" + k.replace("_", "-"): bool(getattr(args, k)) for k in shaping}}
    clash = [flag for flag, is_given in given.items() if is_given]
    if clash:
        raise CirlabError(f"{clash[0]} cannot be combined with --recipe/--config; change the setting with "
                          "--set KEY=VALUE")
    if args.recipe:
        settings = dict(load_recipe(args.recipe).train)
    else:
        settings = load_config_file(args.config).to_dict()
    if args.data_root is not None:
        settings["data_root"] = str(args.data_root)
    settings.update({k: getattr(args, k) for k in LAYERED if getattr(args, k) is not None})
    if args.iters is not None:
        settings["epochs"] = 0  # --iters replaces a length in epochs
    return TrainConfig.from_dict(apply_overrides(settings, parse_key_values(args.overrides, "--set")))


def dataset_options_from_args(args: argparse.Namespace) -> dict:
    options = parse_key_values(args.dataset_option, "--dataset-option")
    if getattr(args, "skip_missing", False):
        options["skip_missing"] = True
    return options


def apply_epochs(config: TrainConfig, seed: seed_flags.SeedRun, explicit_iters: bool) -> None:
    """A run counted in epochs: an explicit `--iters` wins over them, else resolve them on the dataset's epoch size
    (the trainer does the same at start, so the printed configuration is the one that trains)."""
    if not config.epochs:
        return
    if explicit_iters:
        seed.notes.append(f"--iters {config.iters} overrides the length of {config.epochs} epochs")
        config.epochs = 0
        return
    size = open_dataset(config, config.train_split).epoch_size()
    per_epoch = config.resolve_epochs(size)
    seed.notes.append(f"{config.epochs} epochs of {size} training samples at batch {config.batch_size} = "
                      f"{config.iters} iterations ({per_epoch} per epoch)")


def weights_notice(config: TrainConfig) -> str | None:
    """The first line of a run whose ImageNet trunk has no weights: the releases start from ImageNet."""
    if config.model.image_encoder.startswith("resnet") and not config.model.image_weights:
        return (f"note: {config.model.image_encoder} starts from random weights (no --image-weights given); the "
                "released code starts from torchvision's ImageNet weights, so expect lower recall")
    return None


def print_resolved(config: TrainConfig, seed: seed_flags.SeedRun) -> None:
    """Before anything runs: where the settings came from, then the whole configuration."""
    notice = weights_notice(config)
    if notice:
        print(notice, flush=True)
    origin = {"main.py": "a google/tirg / ComposeAE main.py command", "crn": "a yan9qu/crn train.py command"}
    if seed.dialect:
        print(f"settings: {origin[seed.dialect]} (its repository's defaults where it names none)")
    for note in seed.notes:
        print(f"note: {note}")
    print("configuration: " + json.dumps(config.to_dict(), sort_keys=True), flush=True)


def run_dir_from_args(args: argparse.Namespace, seed: seed_flags.SeedRun | None = None) -> Path:
    seed = seed or seed_flags.SeedRun()
    out = args.out if args.out is not None else seed.train.get("out")
    if out is not None:
        return Path(out)
    comment = args.comment or seed.train.get("comment", "")
    name = time.strftime("%Y%m%d-%H%M%S") + (f"_{comment}" if comment else f"_{args.model}")
    return Path(args.log_dir or seed.train.get("log_dir") or "runs") / name


def list_options(args: argparse.Namespace, seed: seed_flags.SeedRun) -> int:
    """`--list-options`: the typed options of the model, encoders and dataset this command would use."""
    model = model_config_from_args(args, seed)
    print(options_table(model.name, model.image_encoder, model.text_encoder,
                        seed_flags.SEED_DATASETS.get(args.dataset, args.dataset)))
    return 0


def handle(args: argparse.Namespace) -> int:
    if args.list_options:
        return list_options(args, seed_flags.resolve(args))
    ctx = distributed.init_from_env(resolve_device(args.device))
    seed = seed_flags.resolve(args)
    if ctx.enabled and args.out is None and "out" not in seed.train:
        raise CirlabError("under torchrun, name the run directory with --out")
    run_dir = run_dir_from_args(args, seed)
    if args.resume:
        if args.out is None and "out" not in seed.train:
            raise CirlabError("--resume needs --out RUN_DIR")
        if not has_checkpoint(run_dir):
            raise CirlabError(f"--resume: no checkpoint in {run_dir}")
        config = load_config(run_dir)
        print(f"resuming {run_dir} with its saved config")
    else:
        config = config_from_file_args(args) if args.recipe or args.config else config_from_args(args, seed)
        check_run_options(config)  # a misspelt option stops here, before the run directory exists
        check_new_run_dir(run_dir)
        apply_epochs(config, seed, explicit_iters=args.iters is not None)
    if ctx.is_main:
        print_resolved(config, seed)
    distributed.barrier(ctx)
    summary = api.train(config, run_dir, resume=args.resume, evaluate=not args.no_eval, eval_progress=not args.json)
    if not ctx.is_main:
        return 130 if summary["interrupted"] else 0
    metrics = summary.get("metrics", {})
    print(f"run directory: {run_dir}")
    if summary["interrupted"]:
        print(f"interrupted at iteration {summary['iterations']}; checkpoint saved. Continue with: "
              f"cirlab train --out {run_dir} --resume")
        return 130
    if summary.get("protocol"):
        print(f"protocol: {summary['protocol']}")
    for key, value in metrics.items():
        print(f"  {key:<22} {100 * value:6.2f}")
    if args.json:
        print_json_line({"run_dir": str(run_dir), "iterations": summary["iterations"],
                         "train_seconds": summary["train_seconds"], **metrics})
    return 0
