"""Training throughput under CPU contention: quiet, then beside competing processes, per thread policy.

Generates a small CSS set, then times N iterations of TIRG (`--encoder`, default small_cnn, batch 32, the
trainer's own batches) in a fresh subprocess per (policy, condition). The competitors are started (and stopped)
by this script:

* `busy`: a single-threaded Python busy loop;
* `torch`: a torch process multiplying 1024 x 1024 matrices with torch's default threads and wait policy;
* `busy+torch`, `torch+torch`: two of them at once.

Policies: `old` = torch's defaults (every core, idle OpenMP threads spin); `new` = cirlab's policy
(`cirlab.utils.threads`: the cores available, one inter-op thread, torch's spinning wait, and the governor that
drops to one thread while other processes use the CPUs; the worker calls `tick()` once per step as the trainer
does). A policy may carry variations after a colon, `;`-separated: `threads=N` (`--threads N` for `new`,
`torch.set_num_threads(N)` for `old`) or any environment variable, e.g. `old:GOMP_SPINCOUNT=10000`,
`new:threads=1`, or `new:CIRLAB_ADAPTIVE_THREADS=0` (no governor: idle threads sleep at once, the policy before).

Prints one markdown row per (policy, condition): the median iterations/s over `--rounds` runs (policies take
turns within each round), the ratio to the same policy's quiet median and how often the governor switched; then
the targets (new policy: >= 40% of quiet beside one competitor of either kind, quiet throughput within 10% of
old) and the whole result as one JSON line. `--cores N` pins this run and its competitors to N CPUs, to
reproduce a small machine on a big one. The old policy can collapse far below fair share (on 2 pinned cores of a
16-core host, beside the busy loop: 0.087 of quiet), so its contended rows take the longest.

    python bench/bench_contention.py [--iters 60] [--rounds 3] [--encoder resnet18] [--cores 2] [--policies old,new]
    python bench/bench_contention.py --iters 5 --train-images 100   # smoke test
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

CONDITIONS = {"quiet": [], "busy": ["busy"], "torch": ["torch"], "busy+torch": ["busy", "torch"],
              "torch+torch": ["torch", "torch"]}
COMPETITORS = {
    "busy": "import sys\nprint('ready', flush=True)\nwhile True:\n    pass\n",
    "torch": ("import torch\na = torch.randn(1024, 1024)\na @ a\nprint('ready', flush=True)\n"
              "while True:\n    a @ a\n"),
}
#: Variables that steer OpenMP/torch threading; removed from every child's environment unless a policy sets them.
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
ONE_COMPETITOR = ("busy", "torch")


def parse_policy(spec: str) -> tuple[str, int | None, dict[str, str]]:
    """`new:threads=2;GOMP_SPINCOUNT=0` -> ("new", 2, {"GOMP_SPINCOUNT": "0"})."""
    base, _, rest = spec.partition(":")
    if base not in ("old", "new"):
        raise SystemExit(f"unknown policy {spec!r}: it starts with old or new")
    threads, env = None, {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        if key == "threads":
            threads = int(value)
        else:
            env[key] = value
    return base, threads, env


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(extra or {})
    return env


def pin(cpus: list[int] | None):  # noqa: ANN201 - a preexec_fn or None
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def worker(args: argparse.Namespace) -> int:
    """One timed run in this (fresh) process; prints one JSON line."""
    base, threads, _ = parse_policy(args.worker)
    if base == "new":
        from cirlab.utils.threads import prepare_environment

        prepare_environment()  # before torch is imported: OpenMP reads its wait policy once
    import torch

    if base == "new":
        from cirlab.utils.threads import apply_thread_policy, governor, tick

        policy = apply_thread_policy(threads, announce=False).describe()
    else:
        if threads:
            torch.set_num_threads(threads)
        policy = f"threads: {torch.get_num_threads()} intra-op, {torch.get_num_interop_threads()} inter-op (torch)"
    from cirlab.losses import LOSSES
    from cirlab.models import ModelConfig, build_model
    from cirlab.training import TrainConfig
    from cirlab.training.run_dir import make_transform, open_dataset
    from cirlab.training.trainer import PairBatches, make_optimizer

    config = TrainConfig(data_root=args.data, model=ModelConfig(name="tirg", image_encoder=args.encoder),
                         batch_size=args.batch_size, device="cpu")
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    model = build_model(config.model, texts=dataset.train_texts())
    optimizer = make_optimizer(config, model)
    batches = PairBatches(dataset, make_transform(config, model, train=True), args.batch_size, seed=0)
    loss_fn = LOSSES.get(config.loss)
    model.train()
    t0 = time.perf_counter()
    for i in range(args.warmup + args.iters):
        if i == args.warmup:
            t0 = time.perf_counter()
        src, texts, tgt = batches[i]
        terms = model.training_losses(model.encode_image(src), model.encode_text(texts), model.encode_image(tgt),
                                      loss_fn)
        optimizer.zero_grad(set_to_none=True)
        model.total_loss(terms).backward()
        optimizer.step()
        if base == "new":
            tick()  # as the trainer does: the governor may change the thread count
    seconds = time.perf_counter() - t0
    gov = governor() if base == "new" else None
    print(json.dumps({"seconds": seconds, "it_s": args.iters / seconds, "threads": policy,
                      "switches": gov.switches if gov else 0, "threads_at_end": torch.get_num_threads()}))
    return 0


def start_competitor(kind: str, cpus: list[int] | None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", COMPETITORS[kind]], stdout=subprocess.PIPE, text=True,
                            env=child_env(), preexec_fn=pin(cpus))
    assert proc.stdout is not None
    proc.stdout.readline()  # "ready": imported and computing
    return proc


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(policy: str, condition: str, data: Path, args: argparse.Namespace, cpus: list[int] | None) -> dict:
    _, _, env = parse_policy(policy)
    competitors = [start_competitor(kind, cpus) for kind in CONDITIONS[condition]]
    try:
        time.sleep(args.settle)
        out = subprocess.run([sys.executable, __file__, "--worker", policy, "--data", str(data), "--iters",
                              str(args.iters), "--warmup", str(args.warmup), "--batch-size", str(args.batch_size),
                               "--encoder", args.encoder],
                             capture_output=True, text=True, env=child_env(env), preexec_fn=pin(cpus))
    finally:
        stop(competitors)
    if out.returncode:
        raise SystemExit(f"worker {policy}/{condition} failed:\n{out.stderr[-3000:]}")
    return {"policy": policy, "condition": condition, **json.loads(out.stdout.strip().splitlines()[-1])}


def targets(rows: list[dict], policies: list[str]) -> dict:
    """The issue's targets, from whichever rows were measured (None where a row is missing)."""
    get = {(r["policy"], r["condition"]): r for r in rows}
    out: dict = {}
    if ("new", "quiet") in get:
        for kind in ONE_COMPETITOR:
            if ("new", kind) in get:
                out[f"new_beside_{kind}_ratio>=0.40"] = get[("new", kind)]["ratio"] >= 0.40
    if ("new", "quiet") in get and ("old", "quiet") in get:
        keep = get[("new", "quiet")]["it_s"] / get[("old", "quiet")]["it_s"]
        out["new_quiet_over_old_quiet"] = round(keep, 3)
        out["new_quiet_within_10%_of_old"] = keep >= 0.90
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=1, help="runs per (policy, condition); the table gives medians")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--encoder", default="small_cnn", help="TIRG's image encoder (small_cnn, resnet18, ...)")
    ap.add_argument("--policies", default="old,new", help="comma-separated policy specs (see the docstring)")
    ap.add_argument("--conditions", default="quiet,busy,torch,busy+torch", help=", ".join(CONDITIONS))
    ap.add_argument("--cores", type=int, default=0, help="pin everything to the first N CPUs (0: all)")
    ap.add_argument("--train-images", type=int, default=600, help="size of the generated CSS train split")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds between starting competitors and the run")
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    conditions = args.conditions.split(",")
    for c in conditions:
        if c not in CONDITIONS:
            raise SystemExit(f"unknown condition {c!r}; choose from {', '.join(CONDITIONS)}")
    policies = args.policies.split(",")
    for p in policies:
        parse_policy(p)
    if "quiet" in conditions:
        conditions = ["quiet"] + [c for c in conditions if c != "quiet"]
    cpus = sorted(os.sched_getaffinity(0))[:args.cores] if args.cores else None
    from cirlab.datasets.css_synth import CSSSynthConfig, generate_css

    print(f"# contention bench: TIRG {args.encoder}, CSS 64x64, batch {args.batch_size}, {args.iters} iterations "
          f"(+{args.warmup} warm-up); {platform.machine()}, {len(cpus) if cpus else os.cpu_count()} CPUs used"
          f"{f' (pinned to {cpus})' if cpus else ''}, python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    print("| policy | condition | it/s (median) | runs | ratio to quiet | thread switches | threads |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    runs: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate_css(tmp, CSSSynthConfig(seed=0, train_images=args.train_images, test_images=20), progress=False)
        for _ in range(args.rounds):  # policies alternate within each condition, so drift falls on all alike
            for condition in conditions:
                for policy in policies:
                    runs.setdefault((policy, condition), []).append(measure(policy, condition, Path(tmp), args, cpus))
    rows: list[dict] = []
    for policy in policies:
        quiet = None
        for condition in conditions:
            got = runs[(policy, condition)]
            it_s = statistics.median(r["it_s"] for r in got)
            quiet = it_s if condition == "quiet" else quiet
            r = {"policy": policy, "condition": condition, "it_s": round(it_s, 3),
                 "runs": [round(g["it_s"], 3) for g in got], "ratio": round(it_s / quiet, 3) if quiet else None,
                 "switches": [g.get("switches", 0) for g in got], "threads": got[0]["threads"]}
            rows.append(r)
            print(f"| {policy} | {condition} | {it_s:.2f} | {', '.join(f'{v:.2f}' for v in r['runs'])} | "
                  f"{r['ratio'] if r['ratio'] is not None else '-'} | {', '.join(map(str, r['switches']))} | "
                  f"{r['threads']} |", flush=True)
    result = {"bench": "contention", "iters": args.iters, "cpus": cpus or os.cpu_count(), "rows": rows,
              "targets": targets(rows, policies)}
    for key, value in result["targets"].items():
        print(f"target {key}: {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
