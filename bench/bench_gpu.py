"""GPU throughput: training samples/s per model, fp32 vs bf16, eager vs torch.compile, and gallery encoding images/s.

Synthetic inputs only (random images, random captions from a small word list, random cached features), models
from random initialisation (ResNet-18 is cirlab's own plain-torch encoder): no dataset, no download.

Rows (train = forward + backward + SGD step under the trainer's autocast, `cirlab.inference.precision`):

* `tirg`: TIRG, ResNet-18 at 224 px, LSTM text encoder, batch 32 (tirg_fashion200k's model);
* `composeae`: ComposeAE, ResNet-18 at 224 px, batch 32 (the recipe's MiniLM text encoder, a download, is
  replaced by an LSTM of MiniLM's width 384);
* `crn`: CRN, ResNet-18 at 224 px, CRN's LSTM, batch 16 (crn_fashioniq's model);
* `combiner`: CLIP4Cir's Combiner on cached 640-d features (RN50x4 CLIP's width; proj 2560, hidden 5120), batch
  4096 - the feature-cache path, no encoder runs;
* `gallery`: TIRG's `embed_target` (ResNet-18, 224 px) in eval mode without gradients, batch 256: images/s.

Each row warms up (the first call of a compiled row compiles; its time is `compile_s`), estimates the time per
step, then runs for `--budget-seconds`. Rows run in order of importance (eager fp32 and bf16, then compiled bf16,
then compiled fp32); a row that would start after `--deadline-seconds` is reported as skipped, so the whole run
fits a time limit (full size on an H100: 252 s for 18 of the 20 rows with `--deadline-seconds 230`, most of it
compiling ResNet-18 for TIRG and CRN, about 40 s each; bench/results/gpu_h100_deadline230.json; the default
deadline lets all 20 rows finish in about 5 minutes). Prints a
markdown row per measurement and one JSON object (device name, torch version, every row, speed-ups) last.

    python bench/bench_gpu.py                      # CUDA, full size
    python bench/bench_gpu.py --tiny --device cpu  # smoke test: tiny models, compile traced with the eager backend
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from cirlab.utils.threads import apply_thread_policy, prepare_environment

prepare_environment()  # before torch is imported: idle OpenMP threads sleep (matters for the CPU smoke test)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cirlab.inference.precision import AUTOCAST_DTYPES, autocast  # noqa: E402
from cirlab.losses import LOSSES  # noqa: E402
from cirlab.models import ModelConfig, build_model  # noqa: E402
from cirlab.training.precision import CompiledOrEager, compile_model  # noqa: E402

WORDS = ("make", "it", "red", "blue", "longer", "shorter", "with", "without", "sleeves", "pattern", "darker",
         "brighter", "add", "remove", "a", "cube", "sphere", "collar", "print", "floral", "striped", "more", "less")
MODELS = ("tirg", "composeae", "crn", "combiner")


@dataclass
class Setup:
    """Sizes of one benchmark mode (full or tiny)."""

    image_size: int
    batches: dict[str, int]
    gallery_batch: int
    configs: dict[str, ModelConfig]
    combiner_dim: int
    backend: str  # torch.compile backend


def full_setup() -> Setup:
    configs = {
        "tirg": ModelConfig(name="tirg", image_encoder="resnet18", text_encoder="lstm", embed_dim=512, text_dim=512),
        "composeae": ModelConfig(name="composeae", image_encoder="resnet18", text_encoder="lstm", embed_dim=512,
                                 text_dim=384),
        "crn": ModelConfig(name="crn", image_encoder="resnet18", text_encoder="crn_lstm", embed_dim=2048,
                           text_dim=1024, text_options={"word_dim": 768, "hidden_dim": 1024},
                           options={"loss_weights": {"class": 1.0, "img": 1.0, "mul_kl": 1.0}}),
        "combiner": ModelConfig(name="combiner", image_encoder="resnet18", text_encoder="lstm", embed_dim=640,
                                text_dim=640, freeze_image=True, freeze_text=True),
    }
    return Setup(224, {"tirg": 32, "composeae": 32, "crn": 16, "combiner": 4096}, 256, configs, 640, "inductor")


def tiny_setup() -> Setup:
    small = {"image_encoder": "small_cnn", "image_options": {"width": 4}, "embed_dim": 16, "text_dim": 16,
             "text_options": {"word_dim": 8, "hidden_dim": 16}}
    configs = {
        "tirg": ModelConfig(name="tirg", text_encoder="lstm", **small),
        "composeae": ModelConfig(name="composeae", text_encoder="lstm", **small),
        "crn": ModelConfig(name="crn", text_encoder="crn_lstm", **small),
        "combiner": ModelConfig(name="combiner", text_encoder="lstm", freeze_image=True, freeze_text=True, **small),
    }
    return Setup(32, {"tirg": 4, "composeae": 4, "crn": 4, "combiner": 8}, 8, configs, 16, "eager")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def captions(rng: np.random.Generator, count: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, size=6)) for _ in range(count)]


def make_step(name: str, setup: Setup, device: torch.device, precision: str, compiled: bool
              ) -> tuple[Callable[[], None], int, torch.nn.Module]:
    """(one step, samples per step, model) for a training row or the gallery row."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    config = setup.configs["tirg" if name == "gallery" else name]
    batch = setup.gallery_batch if name == "gallery" else setup.batches[name]
    texts = captions(rng, batch)
    model = build_model(config, texts=texts).to(device)
    if compiled:
        torch._dynamo.reset()  # a fresh cache per row: no row runs into another's recompilation limit
        compile_model(model, backend=setup.backend)
    images = torch.rand(batch, 3, setup.image_size, setup.image_size, device=device)
    if name == "gallery":
        model.eval()

        @torch.no_grad()
        def gallery_step() -> None:
            with autocast(device, precision):
                model.embed_target(images)

        return gallery_step, batch, model
    model.train()
    loss_fn = LOSSES.get("batch_based_classification")
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    if name == "combiner":
        d = setup.combiner_dim
        source, target = torch.randn(batch, d, device=device), torch.randn(batch, d, device=device)
        words = torch.randn(batch, d, device=device)

        def features() -> tuple:
            return source, words, target
    else:
        target_images = torch.rand_like(images)

        def features() -> tuple:
            return model.encode_image(images), model.encode_text(texts), model.encode_image(target_images)

    def train_step() -> None:
        with autocast(device, precision):
            loss = model.total_loss(model.training_losses(*features(), loss_fn))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return train_step, batch, model


def fell_back(model: torch.nn.Module) -> bool:
    return any(isinstance(fn, CompiledOrEager) and fn.compiled is None
               for fn in (model.encode_image, model.compose_features, model.target_features))


def measure(name: str, setup: Setup, device: torch.device, precision: str, compiled: bool, budget: float) -> dict:
    step, batch, model = make_step(name, setup, device, precision, compiled)
    t0 = time.perf_counter()
    step()
    sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(2):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(3):
        step()
    sync(device)
    per_step = (time.perf_counter() - t0) / 3
    iters = max(3, int(budget / max(per_step, 1e-6)))
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync(device)
    seconds = time.perf_counter() - t0
    row = {"kind": "gallery" if name == "gallery" else "train", "model": name, "precision": precision,
           "compiled": compiled, "batch": batch, "iters": iters, "seconds": round(seconds, 3),
           "samples_s": round(iters * batch / seconds, 1), "first_step_s": round(first_s, 2),
           "compile_s": round(max(0.0, first_s - per_step), 2) if compiled else None,
           "compile_fell_back": fell_back(model) if compiled else None, "skipped": None}
    del model, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def plan() -> list[tuple[str, str, bool]]:
    """(model or "gallery", precision, compiled), most important first."""
    rows = [(m, p, False) for p in ("fp32", "bf16") for m in MODELS]
    rows += [("gallery", p, False) for p in ("fp32", "bf16")]
    for p in ("bf16", "fp32"):
        rows += [(m, p, True) for m in MODELS] + [("gallery", p, True)]
    return rows


def speedups(rows: list[dict]) -> dict[str, float]:
    get = {(r["model"], r["precision"], r["compiled"]): r["samples_s"] for r in rows if not r["skipped"]}
    out = {}
    for m in (*MODELS, "gallery"):
        if (m, "bf16", False) in get and (m, "fp32", False) in get:
            out[f"{m}_bf16_over_fp32"] = round(get[(m, "bf16", False)] / get[(m, "fp32", False)], 2)
        for p in ("fp32", "bf16"):
            if (m, p, True) in get and (m, p, False) in get:
                out[f"{m}_{p}_compiled_over_eager"] = round(get[(m, p, True)] / get[(m, p, False)], 2)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N, cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny models and inputs (CPU smoke test)")
    ap.add_argument("--budget-seconds", type=float, default=None, help="timed seconds per row (default 4; tiny 0.1)")
    ap.add_argument("--deadline-seconds", type=float, default=330.0,
                    help="rows that would start later than this are reported as skipped")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: cirlab's policy)")
    args = ap.parse_args()
    threads = apply_thread_policy(args.threads, announce=False)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    setup = tiny_setup() if args.tiny else full_setup()
    budget = args.budget_seconds if args.budget_seconds is not None else (0.1 if args.tiny else 4.0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                               platform.machine())
    if device.type == "cpu" and not args.tiny:
        print("note: full size on the CPU is slow; --tiny is the CPU smoke test", file=sys.stderr)
    print(f"# gpu bench: {name}, torch {torch.__version__}, {'tiny' if args.tiny else 'full size'}, "
          f"{budget:g} s per row, deadline {args.deadline_seconds:g} s; {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print("| row | model | precision | compiled | batch | samples/s | compile s |\n|---|---|---|---|---|---|---|",
          flush=True)
    started = time.perf_counter()
    rows = []
    for model, precision, compiled in plan():
        if time.perf_counter() - started > args.deadline_seconds:
            rows.append({"kind": "gallery" if model == "gallery" else "train", "model": model, "precision": precision,
                         "compiled": compiled, "skipped": "deadline"})
            print(f"| skipped | {model} | {precision} | {compiled} | | | |", flush=True)
            continue
        r = measure(model, setup, device, precision, compiled, budget)
        rows.append(r)
        note = " (fell back to eager)" if r["compile_fell_back"] else ""
        print(f"| {r['kind']} | {model} | {precision} | {compiled} | {r['batch']} | {r['samples_s']} | "
              f"{r['compile_s'] if compiled else ''}{note} |", flush=True)
    result = {"bench": "gpu", "device": name, "device_type": device.type, "torch": torch.__version__,
              "cuda": torch.version.cuda, "tiny": args.tiny, "budget_seconds": budget,
              "image_size": setup.image_size, "autocast_dtypes": {k: str(v) for k, v in AUTOCAST_DTYPES.items()},
              "cpu_threads": threads.intra_op, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
              "tf32_cudnn": torch.backends.cudnn.allow_tf32,
              "total_seconds": round(time.perf_counter() - started, 1), "rows": rows, "speedups": speedups(rows)}
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
