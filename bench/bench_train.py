"""Training throughput on the CSS benchmark: iterations/s and samples/s for TIRG at batch 32.

Generates a small CSS set in a temporary directory, builds the model and the exact batches the trainer
uses (`PairBatches`), warms up, then times forward + backward + SGD step. Prints a markdown table, one row
per image encoder.

    python bench/bench_train.py [--iters 30] [--batch-size 32] [--encoders small_cnn,resnet18]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from cirlab.datasets.css_synth import CSSSynthConfig, generate_css
from cirlab.losses import LOSSES
from cirlab.models import ModelConfig
from cirlab.training import TrainConfig
from cirlab.training.run_dir import make_transform, open_dataset
from cirlab.training.trainer import PairBatches, make_optimizer


def measure(root: Path, encoder: str, model_name: str, batch: int, iters: int, warmup: int = 3) -> dict:
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
        terms = model.training_losses(model.encode_image(src), model.encode_text(texts), model.encode_image(tgt),
                                      loss_fn)
        optimizer.zero_grad()
        model.total_loss(terms).backward()
        optimizer.step()
        t2 = time.perf_counter()
        if i >= warmup:
            load_s, step_s = load_s + t1 - t0, step_s + t2 - t1
    total = load_s + step_s
    return {"encoder": encoder, "model": model_name, "it_s": iters / total, "samples_s": iters * batch / total,
            "load_ms": 1000 * load_s / iters, "step_ms": 1000 * step_s / iters}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="tirg")
    ap.add_argument("--encoders", default="small_cnn,resnet18")
    args = ap.parse_args()
    print(f"# train bench: {args.model}, CSS 64x64, batch {args.batch_size}; {platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| image encoder | it/s | samples/s | batch load (ms) | fwd+bwd+step (ms) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        generate_css(tmp, CSSSynthConfig(seed=0, train_images=600, test_images=100), progress=False)
        for encoder in args.encoders.split(","):
            r = measure(Path(tmp), encoder, args.model, args.batch_size, args.iters)
            print(f"| {r['encoder']} | {r['it_s']:.2f} | {r['samples_s']:.1f} | {r['load_ms']:.1f} | "
                  f"{r['step_ms']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
