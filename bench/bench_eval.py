"""Evaluation cost: chunked ranking vs one full `torch.topk` over the whole queries x gallery matrix (the floor).

Gallery 100K x 512 and 10K queries of random unit vectors (the issue's sizes), 20 label hits per query, one
excluded position per query. Each method runs in a fresh subprocess so that its peak resident memory (ru_maxrss)
is its own; "extra" memory is the peak minus the resident size right after the features were created. Prints a
markdown table (seconds, ratio to the floor, peak and extra memory), the target (first_hit_ranks <= 1.2x the
floor) and one JSON line.

    python bench/bench_eval.py [--gallery 100000] [--queries 10000] [--dim 512] [--k 100] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


def run_one(method: str, gallery: int, queries: int, dim: int, k: int, threads: int) -> dict:
    import numpy as np
    import torch

    from cirlab.evaluation.recall import first_hit_ranks, topk_chunked

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = torch.nn.functional.normalize(torch.randn(gallery, dim), dim=1)
    q = torch.nn.functional.normalize(torch.randn(queries, dim), dim=1)
    labels_g = {"caption": np.arange(gallery) % max(1, gallery // 20)}
    labels_q = {"caption": np.arange(queries) % max(1, gallery // 20)}
    exclude = np.arange(queries) % gallery
    base = rss_mb()
    t0 = time.perf_counter()
    if method == "full_topk":
        torch.topk(q @ g.t(), k, dim=1)
    elif method == "topk_chunked":
        topk_chunked(q, g, k, exclude=exclude)
    elif method == "first_hit_ranks":
        first_hit_ranks(q, g, labels_q, labels_g, exclude)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "seconds": round(seconds, 3), "peak_mb": round(peak), "extra_mb": round(peak - base),
            "threads": torch.get_num_threads()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.gallery, args.queries, args.dim, args.k, args.threads)))
        return 0
    import torch

    print(f"# eval bench: gallery {args.gallery} x {args.dim}, {args.queries} queries, k={args.k}; "
          f"{platform.processor() or platform.machine()}, {args.threads or torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}")
    print("| method | seconds | x floor | peak RSS (MB) | extra over features (MB) |\n|---|---|---|---|---|")
    rows = []
    for method in ("full_topk", "topk_chunked", "first_hit_ranks"):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--gallery", str(args.gallery), "--queries",
                              str(args.queries), "--dim", str(args.dim), "--k", str(args.k), "--threads",
                              str(args.threads)], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        r["x_floor"] = round(r["seconds"] / rows[0]["seconds"], 3) if rows else 1.0
        rows.append(r)
        print(f"| {r['method']} | {r['seconds']} | {r['x_floor']} | {r['peak_mb']} | {r['extra_mb']} |", flush=True)
    ratio = rows[-1]["x_floor"]
    print(f"target first_hit_ranks <= 1.2x floor: {ratio <= 1.2} ({ratio}x)")
    print(json.dumps({"bench": "eval", "gallery": args.gallery, "queries": args.queries, "dim": args.dim, "k": args.k,
                      "rows": rows, "first_hit_over_floor": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
