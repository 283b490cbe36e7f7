"""Load benchmark of `cirlab serve` on loopback: a bounded number of searches at a fixed concurrency.

    OMP_NUM_THREADS=1 .venv/bin/python bench/load_bench.py --index runs/demo/index --requests 2000 --concurrency 16

Starts `cirlab serve INDEX` on a free port (or uses `--url`), warms it up, then sends `--requests` POST
/api/search requests from `--concurrency` concurrent clients: most by gallery id, every `--upload-every`-th
with an uploaded PNG. Prints throughput, latency p50/p90/p99/max, the error count (anything but HTTP 200) and
the server's mean batch size; `--out` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

TEXTS = ["make top-left object red", "remove blue cube", "add large green circle to middle-center",
         "make bottom-right object small", "remove red triangle", "make middle-left object a cylinder",
         "add small yellow cube to top-right", "make top-center object gray"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(index: Path, port: int, threads: int) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, "-m", "cirlab.cli", "serve", str(index), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


async def wait_ready(client: httpx.AsyncClient, server: subprocess.Popen | None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"cirlab serve exited: {server.stderr.read()[-2000:]}")
        try:
            response = await client.get("/api/health")
            if response.status_code == 200:
                return response.json()
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.2)
    raise SystemExit("the server did not answer /api/health in time")


async def bench(url: str, server: subprocess.Popen | None, args: argparse.Namespace) -> dict:
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        health = await wait_ready(client, server)
        ids = [item["id"] for item in (await client.get("/api/gallery", params={"limit": 200})).json()["items"]]
        upload = (await client.get(f"/api/images/{ids[0]}")).content
        rng = np.random.default_rng(0)
        plan = [(ids[int(rng.integers(len(ids)))], TEXTS[int(rng.integers(len(TEXTS)))], i % args.upload_every == 0)
                for i in range(args.requests + args.warmup)]

        async def one(item_id: str, text: str, use_upload: bool) -> tuple[float, int]:
            started = time.perf_counter()
            try:
                if use_upload:
                    response = await client.post("/api/search", data={"text": text, "k": str(args.k)},
                                                 files={"image": ("ref.png", upload, "image/png")})
                else:
                    response = await client.post("/api/search", data={"id": item_id, "text": text, "k": str(args.k)})
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            return (time.perf_counter() - started) * 1000, status

        async def run(jobs: list) -> list[tuple[float, int]]:
            queue: asyncio.Queue = asyncio.Queue()
            for job in jobs:
                queue.put_nowait(job)
            out: list[tuple[float, int]] = []

            async def worker() -> None:
                while not queue.empty():
                    out.append(await one(*queue.get_nowait()))

            await asyncio.gather(*[worker() for _ in range(args.concurrency)])
            return out

        await run(plan[:args.warmup])
        before = (await client.get("/api/health")).json()["served"]
        started = time.perf_counter()
        timed = await run(plan[args.warmup:])
        wall = time.perf_counter() - started
        after = (await client.get("/api/health")).json()["served"]
    ms = np.array([t for t, _ in timed])
    errors = sum(1 for _, status in timed if status != 200)
    batches = max(1, after["batches"] - before["batches"])
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "server_threads": args.threads,
            "gallery": health["images"], "index_kind": health["kind"], "model": health["model"],
            "requests": len(timed), "concurrency": args.concurrency, "k": args.k,
            "uploads": sum(1 for *_, up in plan[args.warmup:] if up), "wall_s": round(wall, 2),
            "throughput_rps": round(len(timed) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1), "errors": errors,
            "mean_batch": round((after["searches"] - before["searches"]) / batches, 2),
            "load_average_after": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, help="index directory to serve (starts `cirlab serve`)")
    p.add_argument("--url", help="an already running server instead, e.g. http://127.0.0.1:8000")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--upload-every", type=int, default=10, help="every n-th request uploads its reference image")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                   help="OMP_NUM_THREADS of the server it starts")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args()
    if bool(args.index) == bool(args.url):
        p.error("give exactly one of --index and --url")
    server = None
    url = args.url
    if args.index:
        port = free_port()
        server = start_server(args.index, port, args.threads)
        url = f"http://127.0.0.1:{port}"
    try:
        result = asyncio.run(bench(url, server, args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    for key, value in result.items():
        print(f"{key:>20}: {value}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
