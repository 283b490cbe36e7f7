"""Training throughput on the CSS benchmark: iterations/s and samples/s for TIRG at batch 32.

Generates a small CSS set in a temporary directory, builds the model and the exact batches the trainer
uses (`PairBatches`), warms up, then times forward + backward + SGD step under the trainer's autocast. Threads
follow cirlab's CLI policy (`cirlab.utils.threads`; `--threads N` overrides). Prints a markdown table, one row
per image encoder, and one JSON line.

    python bench/bench_train.py [--iters 30] [--batch-size 32] [--encoders small_cnn,resnet18] [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

from cirlab.utils.threads import apply_thread_policy, prepare_environment

prepare_environment()  # before torch is imported, as the `cirlab` command does

import torch  # noqa: E402

from cirlab.datasets.css_synth import CSSSynthConfig, generate_css  # noqa: E402
from cirlab.inference.precision import autocast, check_precision  # noqa: E402
from cirlab.losses import LOSSES  # noqa: E402
from cirlab.models import ModelConfig  # noqa: E402
from cirlab.training import TrainConfig  # noqa: E402
from cirlab.training.run_dir import make_transform, open_dataset  # noqa: E402
from cirlab.training.trainer import PairBatches, make_optimizer  # noqa: E402


def measure(root: Path, encoder: str, model_name: str, batch: int, iters: int, warmup: int = 3,
            precision: str = "fp32") -> dict:
    from cirlab.models import build_model

    config = TrainConfig(data_root=str(root), model=ModelConfig(name=model_name, image_encoder=encoder),
                         batch_size=batch, device="cpu")
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    model = build_model(config.model, texts=dataset.train_texts())
    optimizer = make_optimizer(config, model)
    batches = PairBatches(dataset, make_transform(config, model, train=True), batch, seed=0)
    loss_fn = LOSSES.get(config.loss)
    model.train()
    load_s = step_s = 0.0
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        src, texts, tgt = batches[i]
        t1 = time.perf_counter()
        with autocast(torch.device("cpu"), precision):
            terms = model.training_losses(model.encode_image(src), model.encode_text(texts), model.encode_image(tgt),
                                          loss_fn)
            loss = model.total_loss(terms)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        t2 = time.perf_counter()
        if i >= warmup:
            load_s, step_s = load_s + t1 - t0, step_s + t2 - t1
    total = load_s + step_s
    return {"encoder": encoder, "model": model_name, "precision": precision, "it_s": round(iters / total, 3),
            "samples_s": round(iters * batch / total, 1), "load_ms": round(1000 * load_s / iters, 1),
            "step_ms": round(1000 * step_s / iters, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="tirg")
    ap.add_argument("--encoders", default="small_cnn,resnet18")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="CPU autocast (bf16: opt-in)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cirlab's policy)")
    args = ap.parse_args()
    check_precision(args.precision, torch.device("cpu"))
    policy = apply_thread_policy(args.threads, announce=False)
    print(f"# train bench: {args.model}, CSS 64x64, batch {args.batch_size}, {args.precision}; {platform.machine()}, "
          f"{policy.describe()}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| image encoder | it/s | samples/s | batch load (ms) | fwd+bwd+step (ms) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        generate_css(tmp, CSSSynthConfig(seed=0, train_images=600, test_images=100), progress=False)
        rows = []
        for encoder in args.encoders.split(","):
            r = measure(Path(tmp), encoder, args.model, args.batch_size, args.iters, precision=args.precision)
            rows.append(r)
            print(f"| {r['encoder']} | {r['it_s']:.2f} | {r['samples_s']:.1f} | {r['load_ms']:.1f} | "
                  f"{r['step_ms']:.1f} |", flush=True)
    print(json.dumps({"bench": "train", "threads": policy.describe(), "batch_size": args.batch_size, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
