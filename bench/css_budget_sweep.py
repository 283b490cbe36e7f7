"""Recall@1 against training iterations for several TIRG-family settings on the generated CSS set.

Used to choose the demo's defaults: which encoder / learning rate / loss reaches R@1 >= 0.5 in the fewest
iterations. Runs the configurations as parallel `cirlab train` processes (useful on a GPU box) and prints
a markdown table of R@1 at every evaluation.

    python bench/css_budget_sweep.py --data DIR --out DIR --iters 3000 --eval-every 500 --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CONFIGS: dict[str, list[str]] = {
    "tirg_small_grid": ["--model", "tirg"],
    "tirg_small_avg": ["--model", "tirg", "--image-option", "pool=avg"],
    "tirg_small_grid_lr05": ["--model", "tirg", "--lr", "0.05"],
    "tirg_small_grid_bbc": ["--model", "tirg", "--loss", "batch_based_classification"],
    "tirg_small_grid_b64": ["--model", "tirg", "--batch-size", "64", "--lr", "0.02"],
    "tirg_resnet18": ["--model", "tirg", "--image-encoder", "resnet18"],
    # candidates for the demo's own recipe (run with --extra "--lr-decay-every <0.75 x iters>")
    "demo_bbc": ["--model", "tirg", "--loss", "batch_based_classification"],
    "demo_true_grad": ["--model", "tirg", "--loss", "soft_triplet_true_grad"],
    "demo_all_triplets": ["--model", "tirg", "--loss", "soft_triplet_all"],
    "demo_independent": ["--model", "tirg", "--dataset-option", "sampling=independent"],
    "demo_lr02": ["--model", "tirg", "--lr", "0.02"],
    "demo_width48": ["--model", "tirg", "--image-option", "width=48"],
    "demo_bbc_lr02": ["--model", "tirg", "--loss", "batch_based_classification", "--lr", "0.02"],
    "concat_small_grid": ["--model", "concat"],
    "imgonly_small_grid": ["--model", "imgonly"],
    "textonly_small_grid": ["--model", "textonly"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--extra", default="", help="extra flags for every run")
    args = ap.parse_args()
    names = args.configs.split(",")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("SWEEP_THREADS", "1"), PYTHONUNBUFFERED="1")
    args.out.mkdir(parents=True, exist_ok=True)
    pending, running = list(names), []
    while pending or running:
        while pending and len(running) < args.parallel:
            name = pending.pop(0)
            cmd = [sys.executable, "-m", "cirlab.cli.main", "train", "--data-root", str(args.data),
                   "--out", str(args.out / name), "--iters", str(args.iters), "--eval-every", str(args.eval_every),
                   "--checkpoint-every", "0", "--device", args.device, *CONFIGS[name], *args.extra.split()]
            log = open(args.out / f"{name}.log", "w")  # noqa: SIM115  (closed when the process ends)
            running.append((name, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)))
        name, proc = running.pop(0)
        proc.wait()
    print(f"| config | {' | '.join(f'R@1 @{i}' for i in range(args.eval_every, args.iters + 1, args.eval_every))}"
          " | R@10 | train s |")
    print("|---" * (args.iters // args.eval_every + 3) + "|")
    for name in names:
        path = args.out / name / "metrics.json"
        if not path.is_file():
            print(f"| {name} | failed, see {name}.log |")
            continue
        m = json.loads(path.read_text())
        evals = [h["eval"]["recall@1"] for h in m["history"] if "eval" in h]
        print(f"| {name} | {' | '.join(f'{100 * r:.1f}' for r in evals)} | {100 * m['metrics']['recall@10']:.1f} "
              f"| {m['train_seconds']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
