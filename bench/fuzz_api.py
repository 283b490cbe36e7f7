"""Bounded schemathesis fuzz run of `cirlab serve` on loopback, driven by its own /openapi.json.

    .venv/bin/python bench/fuzz_api.py [--index INDEX_DIR] [--max-examples 300] [--seed 1]

Without `--index` it builds a throwaway gallery in a temporary directory (a 60-image synthetic CSS test split
indexed by an untrained tiny TIRG: the fuzzer tests the API, not the ranking). It starts `cirlab serve` on a
free port of 127.0.0.1 (nothing else is contacted), runs

    st run http://127.0.0.1:PORT/openapi.json --checks all --exclude-checks positive_data_acceptance
       --max-examples N --seed S --workers 1 --phases examples,coverage,fuzzing --generation-database none
       --report ndjson

prints schemathesis' summary plus the number of HTTP requests it sent (from its NDJSON report) and exits
with schemathesis' status. `positive_data_acceptance` is left out because a schema cannot say "a decodable
image": random bytes that satisfy `format: binary` are rightly refused with 400 (and schemathesis' coverage
phase also sends `id` and `image` together despite the schema's `oneOf`). Needs the `dev` extra
(schemathesis). Not part of the test suite (see docs/SERVING.md for a measured run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tiny_index(root: Path) -> Path:
    """A 60-image synthetic CSS test split indexed by an untrained tiny TIRG, under `root`."""
    import torch

    from cirlab.datasets.css_synth import CSSSynthConfig, generate_css
    from cirlab.index import build_index, source_from_dataset
    from cirlab.inference import load
    from cirlab.models import ModelConfig, build_model
    from cirlab.training import TrainConfig, open_dataset
    from cirlab.training.run_dir import run_preprocess, save_run_model

    generate_css(root / "css", CSSSynthConfig(seed=1, train_images=60, test_images=60), progress=False)
    model_config = ModelConfig(name="tirg", image_encoder="small_cnn", embed_dim=32, text_dim=32,
                               image_options={"width": 8}, text_options={"word_dim": 16, "hidden_dim": 32})
    config = TrainConfig(dataset="css", data_root=str(root / "css"), model=model_config, device="cpu")
    torch.manual_seed(0)
    model = build_model(config.model, texts=open_dataset(config, "train").train_texts())
    run_dir = root / "run"
    save_run_model(run_dir, config, model, run_preprocess(config, model))
    pipe = load(run_dir)
    build_index(pipe, source_from_dataset(pipe.open_dataset("test")), root / "index", progress=False)
    return root / "index"


def wait_ready(url: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("cirlab serve exited before answering")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
    raise SystemExit("cirlab serve did not answer /api/health in time")


def count_requests(ndjson: Path) -> int:
    """HTTP requests schemathesis sent, from the interactions recorded in its NDJSON event stream."""
    total = 0
    for line in ndjson.read_text().splitlines():
        event = json.loads(line)
        finished = event.get("ScenarioFinished") or {}
        total += len((finished.get("recorder") or {}).get("interactions") or {})
    return total


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, help="index to serve (default: a throwaway tiny one)")
    p.add_argument("--max-examples", type=int, default=300, help="test cases per operation and phase")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if st is None:
        raise SystemExit("schemathesis is not installed: pip install -c constraints.txt -e '.[dev]'")
    with tempfile.TemporaryDirectory(prefix="cirlab-fuzz-") as tmp:
        index = args.index or tiny_index(Path(tmp))
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = subprocess.Popen([sys.executable, "-m", "cirlab.cli", "serve", str(index), "--port", str(port),
                                   "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            wait_ready(url, server)
            report = Path(tmp) / "events.ndjson"
            done = subprocess.run([st, "run", f"{url}/openapi.json", "--checks", "all", "--exclude-checks",
                                   "positive_data_acceptance", "--max-examples", str(args.max_examples),
                                   "--seed", str(args.seed), "--workers", "1",
                                   "--phases", "examples,coverage,fuzzing", "--generation-database", "none",
                                   "--no-color", "--report", "ndjson", "--report-ndjson-path", str(report)])
            print(f"HTTP requests sent: {count_requests(report) if report.is_file() else 'unknown'}")
        finally:
            server.terminate()
            log = server.communicate(timeout=30)[1]
        errors = [line for line in log.splitlines() if "internal error" in line or "Traceback" in line]
        print(f"server log: {len(log.splitlines())} lines, {len(errors)} about internal errors")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
