"""The model zoo on the CSS benchmark: every composition model, same data, same wall-clock budget, same seed.

Runs `cirlab train` for each configuration (`--minutes` each, `--parallel` at a time, one thread each) and
prints a markdown table of R@1/5/10/50, iterations, training seconds and feature-cache seconds. Pretrained
variants freeze EfficientNet-Lite0 (ImageNet weights, at 128 px: 224 px encodes too slowly on a shared 2-core CPU;
pass --pretrained-size 224 elsewhere) and MiniLM, and train on the feature cache, which the second pretrained
run copies from the first (same encoders, same images).

    cirlab data css --out /tmp/zoo/data
    python bench/model_zoo_css.py --data /tmp/zoo/data --out /tmp/zoo/runs --minutes 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SGD = ["--optimizer", "sgd", "--lr", "0.01"]
ADAM = ["--optimizer", "adam", "--lr", "1e-4", "--weight-decay", "0"]
PRETRAINED = ["--image-encoder", "efficientnet_lite0", "--image-option", "project=false", "--image-size", "128",
              "--freeze-image", "--use_bert", "--feature-cache"]

#: name -> (encoders in words, flags)
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "composeae_pretrained": ("EffNet-Lite0 + MiniLM, frozen, cached", ["--model", "composeae", *SGD, *PRETRAINED]),
    "tirg": ("small_cnn + LSTM", ["--model", "tirg", *SGD]),
    "composeae": ("small_cnn + LSTM", ["--model", "composeae", *SGD]),
    "realspace_concat_ae": ("small_cnn + LSTM", ["--model", "realspace_concat_ae", *SGD]),
    "composeae_xattn": ("small_cnn + LSTM", ["--model", "composeae_xattn", *SGD, "--grad-clip", "5"]),
    "film_san": ("small_cnn + LSTM", ["--model", "film_san", *SGD, "--model-option", "film_channels=256"]),
    "crn": ("2x (small_cnn + LSTM)", ["--model", "crn", *ADAM, "--lr", "1e-3", "--loss", "batch_based_classification"]),
    "combiner": ("small_cnn + LSTM", ["--model", "combiner", *ADAM, "--loss", "batch_based_classification"]),
    "combiner_pretrained": ("EffNet-Lite0 + MiniLM, frozen, cached",
                            ["--model", "combiner", *ADAM, "--loss", "batch_based_classification", *PRETRAINED,
                             "--model-option", "proj_dim=1024", "--model-option", "hidden_dim=2048"]),
}

#: Published figures, NOT measured here (different datasets and backbones): name -> text.
PAPER = {
    "tirg": "CSS 3D R@1 73.7 (TIRG paper)",
    "composeae": "R@10 F200k 55.3 / MIT-States 47.9 / FashionIQ 11.8",
    "realspace_concat_ae": "R@10 F200k 48.4 / MIT-States 46.2 / FashionIQ 9.8",
    "composeae_pretrained": "(ComposeAE uses frozen BERT; figures as composeae)",
}


def run_one(name: str, args: argparse.Namespace, env: dict[str, str]) -> subprocess.Popen:
    flags = [args.pretrained_size if f == "128" else f for f in CONFIGS[name][1]]
    if "--feature-cache" in flags:  # reuse a finished cache of the same encoders (the run checks its meta)
        done = [args.out / n / "feature_cache" for n in CONFIGS if n != name and "--feature-cache" in CONFIGS[n][1]
                and (args.out / n / "metrics.json").is_file()]
        if done and not (args.out / name / "feature_cache").exists():
            shutil.copytree(done[0], args.out / name / "feature_cache")
    cmd = [sys.executable, "-m", "cirlab.cli.main", "train", "--data-root", str(args.data), "--out",
           str(args.out / name), "--iters", "1000000", "--minutes", str(args.minutes), "--checkpoint-every", "0",
           "--eval-every", "0", "--seed", str(args.seed), "--device", "cpu", "--json", *flags]
    log = open(args.out / f"{name}.log", "w")  # noqa: SIM115  (closed with the process)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def row(name: str, out: Path) -> str:
    metrics_path = out / name / "metrics.json"
    if not metrics_path.is_file():
        return f"| {name} | {CONFIGS[name][0]} | failed, see {name}.log | | | | | | | |"
    m = json.loads(metrics_path.read_text())
    r = m.get("metrics", {})
    cache = [json.loads(p.read_text()).get("seconds", 0) for p in (out / name / "feature_cache").glob("*/meta.json")]
    cache_s = f"{sum(cache):.0f}" if cache else "-"
    return (f"| {name} | {CONFIGS[name][0]} | " + " | ".join(f"{100 * r.get(f'recall@{k}', 0):.1f}" for k in
                                                               (1, 5, 10, 50))
            + f" | {m['iterations']} | {m['train_seconds']:.0f} | {cache_s} | {PAPER.get(name, '-')} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="CSS root (cirlab data css --out DIR)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--pretrained-size", default="128", help="input side of the pretrained (cached) variants")
    ap.add_argument("--table-only", action="store_true", help="print the table of existing runs")
    args = ap.parse_args()
    names = args.configs.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                   TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        pending, running = [n for n in names if not (args.out / n / "metrics.json").is_file()], []
        while pending or running:
            while pending and len(running) < args.parallel:
                name = pending.pop(0)
                running.append(run_one(name, args, env))
            finished = [p for p in running if p.poll() is not None]
            if not finished:
                time.sleep(2)
            running = [p for p in running if p not in finished]
    print(f"CSS, {args.minutes:g} min of training per model (feature-cache encoding not counted), seed {args.seed}, "
          "batch 32, 1 thread per run\n")
    print("| model | encoders | R@1 | R@5 | R@10 | R@50 | iters | train s | cache s | paper (not measured here) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        print(row(name, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
