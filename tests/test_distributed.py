"""DDP through torchrun on CPU (Gloo): training with two processes, and sharded evaluation equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from cirlab.inference import distributed

TINY = ["--embed-dim", "32", "--text-dim", "32", "--image-option", "width=8", "--text-option", "word_dim=16",
        "--text-option", "hidden_dim=32"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cirlab.cli",
           *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_shard_and_gather_are_inverse_in_one_process() -> None:
    ctx = distributed.DistContext()
    assert distributed.shard([5, 6, 7], ctx) == [5, 6, 7]
    x = torch.randn(3, 4)
    assert distributed.gather_shards(x, 3, ctx) is x
    assert distributed.any_rank(True, ctx) and not distributed.any_rank(False, ctx)


def test_torchrun_trains_one_run_and_shards_evaluation(tmp_path: Path, tiny_css: Path) -> None:
    run = tmp_path / "run"
    trained = torchrun("train", "--data-root", str(tiny_css), "--out", str(run), "--iters", "6", "--batch-size", "8",
                       "--checkpoint-every", "3", *TINY, "--json")
    summary = last_json(trained.stdout)
    assert summary["iterations"] == 6
    assert json.loads((run / "checkpoint" / "state.json").read_text())["iteration"] == 6
    for name in ("config.json", "model.safetensors", "vocab.json", "metrics.json"):
        assert (run / name).is_file(), name
    single = subprocess.run([sys.executable, "-m", "cirlab.cli", "eval", str(run), "--json"], capture_output=True,
                            text=True, env=ENV, timeout=300, check=True)
    sharded = last_json(torchrun("eval", str(run), "--json").stdout)
    alone = last_json(single.stdout)
    for k in (1, 5, 10, 50, 100):
        assert sharded[f"recall@{k}"] == alone[f"recall@{k}"] == summary[f"recall@{k}"]


def test_torchrun_rejects_a_batch_that_does_not_split(tmp_path: Path, tiny_css: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "cirlab.cli",
           "train", "--data-root", str(tiny_css), "--out", str(tmp_path / "run"), "--iters", "2", "--batch-size", "7",
           *TINY]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode != 0
    assert "--batch-size 7 must be divisible by the 2 torchrun processes" in proc.stderr
