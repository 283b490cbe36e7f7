"""Training samples/s of an old cirlab commit and this checkout, side by side, through each one's own Trainer.

The old code is extracted with `git archive <rev> src` (default 5c6ee17, cirlab before the speed work) unless
`--old-src DIR` names a folder that holds it (DIR/src/cirlab). One CSS set (64 px) is generated; then, for
`--rounds` rounds, every (side, image encoder, precision) trains TIRG at batch 32 in a fresh subprocess whose
PYTHONPATH is that side's src, the order alternating between rounds so that background load falls on both
sides alike. A run trains `--warmup` + `--iters` iterations with `Trainer.train` (no evaluation, no checkpoint
until the end) and its samples/s is read off the trainer's own history: the iterations after the warm-up over
the elapsed time between those two log points.

Threads: each side as its `cirlab train` runs it: the old commit with torch's defaults (every core; idle OpenMP
threads spin), this checkout with `cirlab.utils.threads` (the cores available, torch's spinning wait, one thread
while other processes use the CPUs; idle threads sleep at once where that governor cannot watch). The
parent's OMP_WAIT_POLICY, GOMP_SPINCOUNT, KMP_BLOCKTIME, OMP_NUM_THREADS and MKL_NUM_THREADS are removed from
both; `--env KEY=VALUE` (repeatable) sets a variable for both sides (e.g. `--env OMP_WAIT_POLICY=PASSIVE` gives
both the same wait), `--new-env KEY=VALUE` for this checkout only (e.g. a candidate wait policy,
`--new-env GOMP_SPINCOUNT=10000`), `--threads N` both the same thread count. The old commit has no --precision:
bf16 runs only on this checkout and is compared with the old fp32; so does a `+distinct` variant (`fp32+distinct`,
`bf16+distinct`: this checkout's `--distinct-images`).

Prints one line per run, then per encoder and precision the median samples/s of each side, new/old (the ratio
of the medians, with the per-round range), and new/reference = new/old x 74.5/70.2: the issue's figures for
this machine (google/tirg 70.2 samples/s, cirlab before 74.5 with ResNet-18); google/tirg is not run here.
Ends with one JSON line.

    python bench/bench_vs_old.py [--old-src .oldsrc] [--encoders resnet18,small_cnn] [--precision fp32,bf16]
        [--rounds 3] [--iters 40] [--warmup 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD_REV = "5c6ee17"
#: The issue's measurements on this machine (ResNet-18, CSS 64 px, batch 32): google/tirg and cirlab at OLD_REV.
REFERENCE_SAMPLES_S, OLD_SAMPLES_S = 70.2, 74.5
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def child(args: argparse.Namespace) -> int:
    """Train in this process with whichever cirlab PYTHONPATH gives; print one JSON line."""
    try:  # this checkout: the thread policy of `cirlab train`; the old commit has none (torch's defaults)
        from cirlab.utils.threads import apply_thread_policy, prepare_environment
    except ImportError:
        apply_thread_policy = prepare_environment = None
    if prepare_environment is not None:
        prepare_environment()
    import torch

    if apply_thread_policy is not None:
        threads = apply_thread_policy(args.threads, announce=False).describe()
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        threads = f"threads: {torch.get_num_threads()} intra-op (torch's defaults)"
    import cirlab
    from cirlab.models import ModelConfig
    from cirlab.training import TrainConfig
    from cirlab.training.trainer import Trainer

    precision, _, variant = args.precision.partition("+")  # e.g. "bf16+distinct": --distinct-images too
    extra: dict = {"precision": precision} if precision != "fp32" else {}  # the old TrainConfig has neither
    if variant == "distinct":
        extra["distinct_images"] = True
    elif variant:
        raise SystemExit(f"unknown variant {variant!r} in {args.precision!r}: the one variant is +distinct")
    config = TrainConfig(data_root=args.data, model=ModelConfig(name="tirg", image_encoder=args.encoder),
                         batch_size=args.batch_size, iters=args.warmup + args.iters, log_every=args.warmup,
                         checkpoint_every=0, device="cpu", **extra)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(config, Path(tmp) / "run", progress=False)
        trainer.train()
    marks = {h["iteration"]: h["elapsed_s"] for h in trainer.history if "elapsed_s" in h}
    first, last = args.warmup, args.warmup + args.iters
    seconds = marks[last] - marks[first]
    if seconds <= 0:
        raise SystemExit(f"{args.iters} iterations took under the history's 0.01 s resolution: raise --iters")
    print(json.dumps({"cirlab": str(Path(cirlab.__file__).parent), "threads": threads,
                      "wait": os.environ.get("OMP_WAIT_POLICY", "unset"),
                      "samples_s": round(args.iters * args.batch_size / seconds, 2), "seconds": round(seconds, 2)}))
    return 0


def old_source(args: argparse.Namespace, tmp: Path) -> Path:
    if args.old_src:
        src = Path(args.old_src).resolve() / "src"
    else:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", args.old_rev, "src"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp / "old")], input=archive, check=True)
        src = tmp / "old" / "src"
    if not (src / "cirlab" / "__init__.py").is_file():
        raise SystemExit(f"no cirlab package under {src}")
    return src


def run_one(side: str, src: Path, encoder: str, precision: str, data: Path, args: argparse.Namespace,
            env_extra: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(env_extra)
    if side == "new":
        env.update(dict(item.split("=", 1) for item in args.new_env))
    env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, __file__, "--child", "--data", str(data), "--encoder", encoder, "--precision", precision,
           "--batch-size", str(args.batch_size), "--iters", str(args.iters), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    if out.returncode:
        raise SystemExit(f"{side} {encoder} {precision} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["cirlab"]).resolve() != (src / "cirlab").resolve():
        raise SystemExit(f"{side} imported cirlab from {result['cirlab']}, not {src / 'cirlab'}")
    return {"side": side, "encoder": encoder, "precision": precision, **result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--encoder", help=argparse.SUPPRESS)
    ap.add_argument("--old-src", help="folder holding the old commit's src/cirlab (default: git archive --old-rev)")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--encoders", default="resnet18,small_cnn")
    ap.add_argument("--precision", default="fp32",
                    help="this checkout's precisions, comma list (fp32, bf16; a +distinct suffix adds "
                         "--distinct-images, e.g. bf16+distinct)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=40, help="timed iterations per run")
    ap.add_argument("--warmup", type=int, default=5, help="iterations before the timed ones")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--train-images", type=int, default=600)
    ap.add_argument("--threads", type=int, default=None, help="the same torch thread count on both sides")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="for both sides (repeatable)")
    ap.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE",
                    help="for this checkout only, after --env (repeatable)")
    args = ap.parse_args()
    if args.child:
        return child(args)
    env_extra = dict(item.split("=", 1) for item in args.env)
    precisions = args.precision.split(",")
    if "fp32" not in precisions:
        precisions.insert(0, "fp32")
    sys.path.insert(0, str(REPO / "src"))
    from cirlab.datasets.css_synth import CSSSynthConfig, generate_css

    print(f"# old ({args.old_src or args.old_rev}) vs new ({REPO}) training, TIRG, CSS 64 px, batch {args.batch_size}, "
          f"{args.iters} timed iterations after {args.warmup}, {args.rounds} rounds; {platform.machine()}, "
          f"{os.cpu_count()} CPUs, env for both: {env_extra or 'none'}, for new only: {args.new_env or 'none'}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "old").mkdir()
        sides = {"old": old_source(args, tmp), "new": REPO / "src"}
        generate_css(tmp / "css", CSSSynthConfig(seed=0, train_images=args.train_images, test_images=20),
                     progress=False)
        for r in range(args.rounds):
            for encoder in args.encoders.split(","):
                jobs = [("old", "fp32")] + [("new", p) for p in precisions]
                for side, precision in (jobs if r % 2 == 0 else jobs[::-1]):
                    run = run_one(side, sides[side], encoder, precision, tmp / "css", args, env_extra)
                    run["round"] = r
                    runs.append(run)
                    print(f"round {r} {side} {encoder} {precision}: {run['samples_s']:.1f} samples/s "
                          f"({run['threads']}; OMP_WAIT_POLICY {run['wait']})", flush=True)
    factor = OLD_SAMPLES_S / REFERENCE_SAMPLES_S
    print(f"\nnew/reference = new/old x {OLD_SAMPLES_S}/{REFERENCE_SAMPLES_S} = new/old x {factor:.3f} (the issue's "
          "google/tirg and cirlab-before figures for this machine, ResNet-18; google/tirg is not run here)\n")
    print("| image encoder | new precision | old samples/s | new samples/s | new/old (range over rounds) | "
          "new/reference |\n|---|---|---|---|---|---|")
    summary = []
    for encoder in args.encoders.split(","):
        old = {r["round"]: r["samples_s"] for r in runs if r["side"] == "old" and r["encoder"] == encoder}
        for precision in precisions:
            new = {r["round"]: r["samples_s"] for r in runs
                   if r["side"] == "new" and r["encoder"] == encoder and r["precision"] == precision}
            ratio = statistics.median(new.values()) / statistics.median(old.values())
            per_round = [new[k] / old[k] for k in new]
            row = {"encoder": encoder, "precision": precision, "old_samples_s": statistics.median(old.values()),
                   "new_samples_s": statistics.median(new.values()), "new_over_old": round(ratio, 3),
                   "new_over_old_range": [round(min(per_round), 3), round(max(per_round), 3)],
                   "new_over_reference": round(ratio * factor, 3) if encoder == "resnet18" else None}
            summary.append(row)
            reference = f"{row['new_over_reference']:.2f}" if row["new_over_reference"] else "(ResNet-18 only)"
            print(f"| {encoder} | {precision} | {row['old_samples_s']:.1f} | {row['new_samples_s']:.1f} | "
                  f"{ratio:.3f} ({min(per_round):.3f}-{max(per_round):.3f}) | {reference} |")
    print(json.dumps({"bench": "train_vs_old", "old": args.old_src or args.old_rev, "env": env_extra,
                      "new_env": args.new_env,
                      "factor_old_over_reference": round(factor, 4), "rows": summary, "runs": runs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
