"""`cirlab eval RUN_DIR`: Recall@K of a trained run under its dataset's protocol."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from cirlab.cli._options import parse_key_values, print_json_line
from cirlab.evaluation import evaluate_run
from cirlab.training import distributed
from cirlab.utils.io import write_json_atomic
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run directory (Recall@K with the dataset's protocol)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    p.add_argument("--data-root", default=None, help="dataset location, if it moved since training")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="override a dataset option of the run (e.g. gallery_protocol=val-union)")
    p.add_argument("--skip-missing", action="store_true", help="drop queries whose images are missing")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_threads_argument(p)
    p.set_defaults(handler=run)


def format_table(result: dict) -> str:
    keys = [k for k in result if "recall" in k and k != "per_set"]
    lines = [f"{result['dataset']} / {result['split']} / {result['model']}: {result['queries']} queries, "
             f"gallery {result['gallery']}", f"protocol: {result['protocol']}"]
    lines += [f"  {k:<22} {100 * result[k]:6.2f}" for k in keys]
    if len(result.get("per_set", {})) > 1:
        for name, metrics in result["per_set"].items():
            lines.append(f"  [{name}] " + "  ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items()))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = parse_key_values(args.dataset_option, "--dataset-option")
    if args.skip_missing:
        options["skip_missing"] = True
    ctx = distributed.init_from_env(torch.device("cpu"))
    result = evaluate_run(args.run_dir, args.split, args.data_root, progress=not args.json,
                          dataset_options=options)
    if not ctx.is_main:  # under torchrun every rank encodes a shard; rank 0 reports
        return 0
    write_json_atomic(args.run_dir / f"eval_{result['split']}.json", result)
    if args.json:
        print_json_line({k: v for k, v in result.items() if k != "per_set"} | {"per_set": result["per_set"]})
    else:
        print(format_table(result))
    return 0
