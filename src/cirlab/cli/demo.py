"""`cirlab demo`: the embedded default end to end — generate CSS, train TIRG, evaluate, write a report.

Layout of the output directory (default `runs/demo/`): `data/` (the CSS set), `run/` (the trained run
directory), `report.md`, `recall.png`, `training.png`, `examples.png`, and `.cirlab-demo` (marks the folder as
the demo's). The run is evaluated on the test split `DEMO_EVALS` times while it trains, for the training curve. A
finished run is reused on a second call (use `--fresh` to train again); an interrupted one is resumed from its
checkpoint. A folder without the marker that already holds any of those names is refused unless `--force`.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.datasets.css import CSS_FILE
from cirlab.evaluation import evaluate, make_eval_fn
from cirlab.inference import RunSpec, load
from cirlab.training import TrainConfig, Trainer
from cirlab.training.checkpoint import has_checkpoint
from cirlab.training.recipes import recipe
from cirlab.training.run_dir import read_metrics
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import write_json_atomic
from cirlab.utils.threads import add_threads_argument

#: The demo's recipe: chosen with bench/css_budget_sweep.py to reach a useful Recall@1 within minutes on a CPU.
DEMO_ITERS = 3000
DEMO_MINUTES = 7.0
MARKER = ".cirlab-demo"
#: Evaluations during training (the last at the end), the points of the training curve's recall.
DEMO_EVALS = 6
LAYOUT = ("data", "run", "report.md", "recall.png", "training.png", "examples.png")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="generate CSS, train TIRG, evaluate and write a report (the quick tour)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    p.add_argument("--minutes", type=float, default=DEMO_MINUTES, help="training time budget")
    p.add_argument("--iters", type=int, default=DEMO_ITERS, help="training iterations (if time allows)")
    p.add_argument("--model", default="tirg", help="composition model to train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-images", type=int, default=None, help="size of a newly generated CSS train split")
    p.add_argument("--test-images", type=int, default=None, help="size of a newly generated CSS test split")
    p.add_argument("--fresh", action="store_true", help="train again even if a finished run exists")
    p.add_argument("--force", action="store_true",
                   help="write into an --out that holds files of the same names not made by the demo")
    add_device_argument(p, default="auto")
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def demo_config(data_root: Path, args: argparse.Namespace) -> TrainConfig:
    """The `demo` recipe with this run's data, length (lr x0.1 after 75% of it), seed, budget and model, evaluated
    `DEMO_EVALS` times (the evaluations count against the time budget)."""
    return recipe("demo", data_root=str(data_root), iters=args.iters, lr_decay_every=int(args.iters * 0.75),
                  eval_every=max(1, -(-args.iters // DEMO_EVALS)), seed=args.seed, minutes=args.minutes,
                  device=args.device, model={"name": args.model})


def claim_out_dir(out: Path, force: bool) -> None:
    """Refuse an --out whose demo file names already exist but were not made by the demo (no marker), unless
    `force`; then mark the folder as the demo's."""
    if out.exists() and not out.is_dir():
        raise CirlabError(f"--out {out} is a file, not a folder")
    if not force and not (out / MARKER).is_file():
        clashes = [name for name in LAYOUT if (out / name).exists()]
        if clashes:
            raise CirlabError(f"--out {out} already holds {', '.join(clashes)}, not made by `cirlab demo`; pass "
                              "--force to write over them, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def handle(args: argparse.Namespace) -> int:
    from cirlab.datasets.css_synth import CSSSynthConfig, generate_css
    from cirlab.evaluation.report import write_report

    if args.minutes <= 0 or args.iters <= 0:
        raise CirlabError("--minutes and --iters must be positive")
    started = time.perf_counter()
    out: Path = args.out
    data_root, run_dir = out / "data", out / "run"
    claim_out_dir(out, args.force)
    print(f"[1/4] CSS benchmark in {data_root}")
    if not (data_root / CSS_FILE).is_file():
        sizes = {k: v for k, v in (("train_images", args.train_images), ("test_images", args.test_images)) if v}
        generate_css(data_root, CSSSynthConfig(seed=args.seed, **sizes), force=args.force)
    finished = (run_dir / "metrics.json").is_file() and read_metrics(run_dir)["interrupted"] is False
    if args.fresh and run_dir.exists():
        shutil.rmtree(run_dir)
        finished = False
    if finished:
        print(f"[2/4] reusing the finished run in {run_dir} (pass --fresh to train again)")
        summary = read_metrics(run_dir)
    else:
        resume = has_checkpoint(run_dir)
        config = demo_config(data_root, args)
        print(f"[2/4] training {config.model.name} ({config.model.image_encoder} + LSTM) for up to {config.iters} "
              f"iterations or {config.minutes:g} minutes{' (resuming)' if resume else ''}")
        evaluate_fn = make_eval_fn(RunSpec.from_train_dict(config.to_dict()), progress=False)
        summary = Trainer(config, run_dir, evaluate=evaluate_fn).train(resume=resume)
        if summary["interrupted"]:
            print(f"interrupted; run `cirlab demo --out {out}` again to resume")
            return 130
    print("[3/4] evaluating on the test split (TIRG's CSS protocol)")
    pipe = load(run_dir, device=args.device)
    test = pipe.open_dataset("test")
    result = evaluate(pipe, test, progress=True)
    write_json_atomic(run_dir / "eval_test.json", result)
    print("[4/4] writing the report")
    paths = write_report(out, pipe, test, result, summary, history=read_metrics(run_dir).get("history", []))
    print()
    for k in (1, 5, 10, 50, 100):
        print(f"  Recall@{k:<4} {100 * result[f'recall@{k}']:6.2f}")
    print(f"\n{result['queries']} queries, gallery {result['gallery']}; trained {summary['iterations']} iterations "
          f"in {summary['train_seconds']:.0f} s; demo took {time.perf_counter() - started:.0f} s in all")
    print(f"run directory:  {run_dir}")
    for name, path in paths.items():
        print(f"{name + ':':<15} {path}")
    print(f"next: cirlab serve  (web page over the demo gallery), cirlab eval {run_dir}")
    return 0


