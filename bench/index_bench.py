"""Index benchmark: build time, memory, single-query latency p50/p99 and recall@10 of exact vs FAISS search.

The gallery is synthetic: `--n` unit vectors of `--dim` dimensions drawn from `--clusters` clusters; each cluster
is a random unit centre plus an offset along `--intrinsic-dim` random directions whose scales decay as
i^-`--decay` (total offset norm `--spread`), plus isotropic noise of norm `--noise`: clustered, with a decaying
spectrum, roughly how learned embeddings look. Queries are fresh
draws from the same mixture, not gallery points. Recall@10 is |approximate top-10 & exact top-10| / 10.

    OMP_NUM_THREADS=1 .venv/bin/python bench/index_bench.py --n 1000000 --out bench/results/index_1m.json

Searchers are the ones `cirlab index` builds (cirlab.index.searchers), with the parameters given here.
HNSW is built on the first `--hnsw-n` vectors only when that is smaller than `--n` (its build is the slow part
on a small CPU); the report says so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cirlab.evaluation.recall import topk_chunked
from cirlab.index.searchers import make_searcher


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def clustered(n: int, dim: int, clusters: int, intrinsic: int, decay: float, spread: float, noise: float,
              seed: int) -> np.ndarray:
    """`n` unit vectors from a mixture of `clusters` blobs with decaying spectra (deterministic for `seed`)."""
    rng = np.random.default_rng(seed)
    centre_rng = np.random.default_rng(12345)  # gallery and queries share the clusters
    centres = centre_rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = centre_rng.standard_normal((clusters, intrinsic, dim), dtype=np.float32) / np.sqrt(dim)
    scales = np.arange(1, intrinsic + 1, dtype=np.float32) ** -decay
    scales *= spread / np.sqrt(np.sum(scales**2))
    labels = rng.integers(clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for c in range(clusters):
        rows = np.nonzero(labels == c)[0]
        if len(rows) == 0:
            continue
        z = rng.standard_normal((len(rows), intrinsic), dtype=np.float32) * scales
        pts = centres[c] + z @ bases[c]
        pts += rng.standard_normal(pts.shape, dtype=np.float32) * (noise / np.sqrt(dim))
        out[rows] = pts
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def latencies_ms(searcher, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Search one query at a time; returns per-query milliseconds and the (Q, k) positions."""
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        _, pos = searcher.search(q[None, :], k)
        times.append((time.perf_counter() - t) * 1000)
        found.append(pos[0])
    return np.array(times), np.stack(found)


def key_values(text: str) -> dict[str, int]:
    """'nlist=1024,m=16' -> {'nlist': 1024, 'm': 16}."""
    return {a: int(b) for a, b in (x.split("=") for x in text.split(",") if x)}


def timing(ms: np.ndarray) -> dict[str, float]:
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "queries_timed": len(ms)}


def recall_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(f[:k]) & set(t[:k])) / k for f, t in zip(found, truth, strict=True)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--intrinsic-dim", type=int, default=64)
    p.add_argument("--decay", type=float, default=0.5, help="scale of the i-th in-cluster direction: i^-decay")
    p.add_argument("--spread", type=float, default=0.7, help="norm of the in-cluster offset (centre norm 1)")
    p.add_argument("--noise", type=float, default=0.4, help="norm of the isotropic noise per point")
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--exact-queries", type=int, default=100, help="queries timed one by one with exact search")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    p.add_argument("--ivfpq", default="nlist=1024", help="ivfpq build params, comma-separated k=v")
    p.add_argument("--nprobe", default="8,16,32,64", help="ivfpq nprobe values to time")
    p.add_argument("--rerank", default="10,30,50", help="ivfpq re-ranking factors (x k candidates) to time")
    p.add_argument("--hnsw-n", type=int, default=0, help="build HNSW on this many vectors (0: skip HNSW)")
    p.add_argument("--hnsw", default="m=16,ef_construction=40", help="hnsw build params")
    p.add_argument("--ef-search", default="32,64,128")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()

    import faiss

    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "threads": args.threads,
                    "faiss": faiss.__version__, "machine": platform.machine(),
                    "config": {k: v for k, v in vars(args).items() if k != "out"} | {"out": str(args.out)}}

    t = time.perf_counter()
    shape = (args.dim, args.clusters, args.intrinsic_dim, args.decay, args.spread, args.noise)
    gallery = clustered(args.n, *shape, seed=0)
    queries = clustered(args.queries, *shape, seed=1)
    report["generate_s"] = round(time.perf_counter() - t, 1)
    print(f"generated {args.n} x {args.dim} in {report['generate_s']} s; rss {rss_mb():.0f} MB", flush=True)

    t = time.perf_counter()
    _, truth = topk_chunked(torch.from_numpy(queries), torch.from_numpy(gallery), args.k)
    truth = truth.numpy()
    report["ground_truth_s"] = round(time.perf_counter() - t, 1)
    print(f"exact ground truth for {args.queries} queries (batched) in {report['ground_truth_s']} s", flush=True)

    results = []
    base = rss_mb()
    t = time.perf_counter()
    exact = make_searcher("exact", args.dim)
    exact.build(gallery)
    ms, found = latencies_ms(exact, queries[:args.exact_queries], args.k)
    results.append({"kind": "exact", "n": args.n, "build_s": round(float(time.perf_counter() - t - ms.sum() / 1000), 3),
                    "extra_rss_mb": round(rss_mb() - base), **timing(ms),
                    "recall@10": recall_at(found, truth[:args.exact_queries], args.k)})
    print(results[-1], flush=True)
    del exact

    base = rss_mb()
    t = time.perf_counter()
    ivf = make_searcher("ivfpq", args.dim, key_values(args.ivfpq))
    ivf.build(gallery)
    build_s = time.perf_counter() - t
    extra = rss_mb() - base
    index_mb = faiss.serialize_index(ivf.index).nbytes / 2**20
    for rerank in map(int, args.rerank.split(",")):
        for nprobe in map(int, args.nprobe.split(",")):
            ivf.params.update(nprobe=nprobe, rerank=rerank)
            ms, found = latencies_ms(ivf, queries, args.k)
            results.append({"kind": "ivfpq", "n": args.n, "params": dict(ivf.params), "build_s": round(build_s, 1),
                            "extra_rss_mb": round(extra), "faiss_index_mb": round(index_mb, 1), **timing(ms),
                            "recall@10": round(recall_at(found, truth, args.k), 4)})
            print(results[-1], flush=True)
    del ivf

    if args.hnsw_n:
        n = min(args.hnsw_n, args.n)
        sub_truth = truth
        if n < args.n:
            _, sub = topk_chunked(torch.from_numpy(queries), torch.from_numpy(gallery[:n]), args.k)
            sub_truth = sub.numpy()
        base = rss_mb()
        t = time.perf_counter()
        hnsw = make_searcher("hnsw", args.dim, key_values(args.hnsw))
        hnsw.build(gallery[:n])
        build_s = time.perf_counter() - t
        extra = rss_mb() - base
        for ef in map(int, args.ef_search.split(",")):
            hnsw.params["ef_search"] = ef
            ms, found = latencies_ms(hnsw, queries, args.k)
            results.append({"kind": "hnsw", "n": n, "params": dict(hnsw.params), "build_s": round(build_s, 1),
                            "extra_rss_mb": round(extra), **timing(ms),
                            "recall@10": round(recall_at(found, sub_truth, args.k), 4)})
            print(results[-1], flush=True)

    report["results"] = results
    report["load_average_after"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
