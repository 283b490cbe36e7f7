"""`cirlab eval RUN_DIR`: Recall@K of a trained run under its dataset's protocol."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.cli._options import parse_key_values, print_json_line
from cirlab.evaluation import evaluate_run
from cirlab.inference import distributed
from cirlab.training import load_config
from cirlab.training.checkpoint import checkpoint_dir
from cirlab.training.run_dir import METRICS_FILE, WEIGHTS_FILE, read_metrics
from cirlab.utils.io import read_json, write_json_atomic
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a run directory (Recall@K with the dataset's protocol)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default=None, help="split to evaluate (default: the run's eval split)")
    p.add_argument("--data-root", default=None, help="dataset location, if it moved since training")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="override a dataset option of the run (e.g. gallery_protocol=val-union)")
    p.add_argument("--skip-missing", action="store_true", help="drop queries whose images are missing")
    add_device_argument(p)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"],
                   help="autocast of the encoders (default fp32; fp16 on CUDA only)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def format_table(result: dict) -> str:
    keys = [k for k in result if "recall" in k and k != "per_set"]
    lines = [f"{result['dataset']} / {result['split']} / {result['model']}: {result['queries']} queries, "
             f"gallery {result['gallery']}", f"protocol: {result['protocol']}"]
    lines += [f"  {k:<22} {100 * result[k]:6.2f}" for k in keys]
    if len(result.get("per_set", {})) > 1:
        for name, metrics in result["per_set"].items():
            lines.append(f"  [{name}] " + "  ".join(f"{k}={100 * v:.2f}" for k, v in metrics.items()))
    return "\n".join(lines)


def unfinished_notice(run_dir: Path) -> str | None:
    """One line naming the weights evaluated and their iteration, when the run did not train to the end
    (interrupted, killed, or stopped by its time budget); None for a finished run."""
    iters = load_config(run_dir).iters
    weights = run_dir / WEIGHTS_FILE
    if (run_dir / METRICS_FILE).is_file():
        metrics = read_metrics(run_dir)
        done = metrics["iterations"]
        if not metrics["interrupted"] and done >= iters:
            return None
        why = "the run was interrupted" if metrics["interrupted"] else "the run stopped at its time budget"
    else:
        state = checkpoint_dir(run_dir) / "state.json"
        meta = read_json(state, "checkpoint") if state.is_file() else {}
        done = meta.get("iteration") if isinstance(meta, dict) else None
        if not isinstance(done, int) or isinstance(done, bool):
            return (f"cirlab: note: evaluating {weights} of an unknown iteration ({run_dir} has neither "
                    f"{METRICS_FILE} nor a checkpoint)")
        why = f"the run has not finished: no {METRICS_FILE}"
    resume = f"; continue it with `cirlab train --out {run_dir} --resume`" if done < iters else ""
    return f"cirlab: note: evaluating {weights} from iteration {done} of {iters} ({why}{resume})"


def handle(args: argparse.Namespace) -> int:
    options = parse_key_values(args.dataset_option, "--dataset-option")
    if args.skip_missing:
        options["skip_missing"] = True
    device = distributed.rank_device(args.device)
    ctx = distributed.current()
    notice = unfinished_notice(args.run_dir) if args.run_dir.is_dir() else None
    if notice and ctx.is_main:
        print(notice, file=sys.stderr, flush=True)
    result = evaluate_run(args.run_dir, args.split, args.data_root, progress=not args.json,
                          dataset_options=options, device=device, precision=args.precision)
    if not ctx.is_main:  # under torchrun every rank encodes a shard; rank 0 reports
        return 0
    write_json_atomic(args.run_dir / f"eval_{result['split']}.json", result)
    if args.json:
        print_json_line({k: v for k, v in result.items() if k != "per_set"} | {"per_set": result["per_set"]})
    else:
        print(format_table(result))
    return 0
