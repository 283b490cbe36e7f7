"""Training throughput on the CSS benchmark: samples/s of TIRG at batch 32, and where a step's time goes.

Generates a small CSS set (64 px) in a temporary directory and builds, per image encoder and precision, the model,
optimiser and batches the trainer uses (`PairBatches` with its pixel cache, `make_optimizer`, the trainer's
autocast). Every (encoder, precision) row then runs in turn, `--block` steps at a time, until each has `--iters`
timed steps after `--warmup` untimed ones, so that background load falls on every row alike. A step is timed in
four parts: batch load (sampling, images, normalisation), forward (encoders, composition, loss, under autocast),
backward (zero_grad + backward) and optimiser step (`optimizer`). The table gives the median of each part (ms)
and samples/s = batch / median step time.

Threads follow cirlab's CLI policy (`cirlab.utils.threads`: the cores available, torch's spinning wait, or idle
threads sleeping at once where the governor cannot watch the CPUs); this bench measures quiet speed, so it never
lets the governor switch (bench_contention.py does). `--threads N` overrides the count; OMP_WAIT_POLICY,
GOMP_SPINCOUNT or KMP_BLOCKTIME in the environment override the wait, e.g. `OMP_WAIT_POLICY=PASSIVE`.
`--precision bf16` is the CPU's opt-in bfloat16 autocast (parameters and optimiser stay float32).
`--memory-format contiguous,channels_last` adds rows with the image encoder and its batches in channels_last
memory format: an A/B experiment, the trainer does not use it. `--distinct-images off,on` adds rows that encode
each distinct image of a batch once (`cirlab train --distinct-images`). Prints a markdown table and one JSON line.

    python bench/bench_train.py [--iters 30] [--encoders small_cnn,resnet18] [--precision fp32,bf16]
        [--memory-format contiguous,channels_last] [--distinct-images off,on]
    python bench/bench_vs_old.py ...   # the same training, old commit against this one, side by side
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from cirlab.utils.threads import apply_thread_policy, prepare_environment

prepare_environment()  # before torch is imported, as the `cirlab` command does

import torch  # noqa: E402

from cirlab.datasets.css_synth import CSSSynthConfig, generate_css  # noqa: E402
from cirlab.inference.precision import autocast, check_precision  # noqa: E402
from cirlab.losses import LOSSES  # noqa: E402
from cirlab.models import CompositionModel, ModelConfig, build_model  # noqa: E402
from cirlab.training import TrainConfig  # noqa: E402
from cirlab.training.run_dir import make_transform, open_dataset  # noqa: E402
from cirlab.training.trainer import PairBatches, make_optimizer  # noqa: E402

PARTS = ("load", "forward", "backward", "optimizer")


@dataclass
class Row:
    """One (encoder, precision) under test: its model, optimiser, batches and the step times so far."""

    encoder: str
    precision: str
    model: CompositionModel
    optimizer: torch.optim.Optimizer
    batches: PairBatches
    channels_last: bool
    next_batch: int = 0
    times: list[tuple[float, ...]] = field(default_factory=list)

    def step(self, loss_fn: object) -> tuple[float, ...]:
        """One training step as the trainer takes it; returns the seconds of each of PARTS."""
        model, cpu = self.model, torch.device("cpu")
        t0 = time.perf_counter()
        src, texts, tgt = self.batches[self.next_batch]
        if self.channels_last:
            src, tgt = (x.contiguous(memory_format=torch.channels_last) for x in (src, tgt))
        self.next_batch += 1
        t1 = time.perf_counter()
        with autocast(cpu, self.precision):
            terms = model.training_losses(*self.batches.features(model, (src, texts, tgt), cpu), loss_fn)
            loss = model.total_loss(terms)
        t2 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        self.optimizer.step()
        t4 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2, t4 - t3

    def summary(self, batch: int) -> dict:
        medians = {p: statistics.median(t[i] for t in self.times) for i, p in enumerate(PARTS)}
        step = statistics.median(sum(t) for t in self.times)
        return {"encoder": self.encoder, "precision": self.precision, "channels_last": self.channels_last,
                "distinct_images": self.batches.distinct,
                "iters": len(self.times), "samples_s": round(batch / step, 1), "step_ms": round(1000 * step, 1),
                **{f"{p}_ms": round(1000 * v, 1) for p, v in medians.items()}}


def make_row(root: Path, encoder: str, precision: str, model_name: str, batch: int, channels_last: bool,
             distinct: bool) -> Row:
    config = TrainConfig(data_root=str(root), model=ModelConfig(name=model_name, image_encoder=encoder),
                         batch_size=batch, device="cpu", precision=precision)
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    model = build_model(config.model, texts=dataset.train_texts())
    if channels_last:
        model.image_encoder.to(memory_format=torch.channels_last)
    model.train()
    return Row(encoder, precision, model, make_optimizer(config, model),
               PairBatches(dataset, make_transform(config, model, train=True), batch, seed=0, distinct=distinct),
               channels_last)


def run(rows: list[Row], loss_fn: object, warmup: int, iters: int, block: int) -> None:
    """Round-robin over the rows, `block` steps each, until every row has `iters` timed steps."""
    for row in rows:
        for _ in range(warmup):
            row.step(loss_fn)
    while any(len(r.times) < iters for r in rows):
        for row in rows:
            for _ in range(min(block, iters - len(row.times))):
                row.times.append(row.step(loss_fn))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=30, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per row first")
    ap.add_argument("--block", type=int, default=5, help="steps a row takes before the next row's turn")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", default="tirg")
    ap.add_argument("--encoders", default="small_cnn,resnet18")
    ap.add_argument("--precision", default="fp32,bf16", help="comma list of fp32, bf16 (CPU autocast, opt-in)")
    ap.add_argument("--memory-format", default="contiguous",
                    help="comma list of contiguous, channels_last (experiment: encoder and batches)")
    ap.add_argument("--distinct-images", default="off", help="comma list of off, on (--distinct-images of train)")
    ap.add_argument("--train-images", type=int, default=600, help="size of the generated CSS train split")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cirlab's policy)")
    args = ap.parse_args()
    precisions = args.precision.split(",")
    for precision in precisions:
        if precision not in ("fp32", "bf16"):
            raise SystemExit(f"--precision: fp32 or bf16 on the CPU, not {precision!r}")
        check_precision(precision, torch.device("cpu"))
    formats = args.memory_format.split(",")
    if not set(formats) <= {"contiguous", "channels_last"}:
        raise SystemExit(f"--memory-format: contiguous or channels_last, not {args.memory_format!r}")
    distinct = args.distinct_images.split(",")
    if not set(distinct) <= {"off", "on"}:
        raise SystemExit(f"--distinct-images: off or on, not {args.distinct_images!r}")
    policy = apply_thread_policy(args.threads, announce=False)
    print(f"# train bench: {args.model}, CSS 64x64, batch {args.batch_size}, {args.iters} timed steps per row "
          f"(medians); {platform.machine()}, {policy.describe()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory() as tmp:
        generate_css(tmp, CSSSynthConfig(seed=0, train_images=args.train_images, test_images=20), progress=False)
        rows = [make_row(Path(tmp), e, p, args.model, args.batch_size, f == "channels_last", d == "on")
                for e in args.encoders.split(",") for p in precisions for f in formats for d in distinct]
        run(rows, LOSSES.get(TrainConfig().loss), args.warmup, args.iters, args.block)
    results = [r.summary(args.batch_size) for r in rows]
    print("| image encoder | precision | memory format | distinct images | samples/s | step (ms) | batch load "
          "| forward | backward | optimiser step |\n|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        layout = "channels_last" if r["channels_last"] else "contiguous"
        print(f"| {r['encoder']} | {r['precision']} | {layout} | {'on' if r['distinct_images'] else 'off'} | "
              f"{r['samples_s']:.1f} | {r['step_ms']:.1f} | {r['load_ms']:.1f} | {r['forward_ms']:.1f} | "
              f"{r['backward_ms']:.1f} | {r['optimizer_ms']:.1f} |", flush=True)
    print(json.dumps({"bench": "train", "threads": policy.describe(), "batch_size": args.batch_size,
                      "rows": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
