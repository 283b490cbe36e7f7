"""CPU thread policy: how many threads torch computes with, and how its idle OpenMP threads wait.

Why this exists: torch's CPU kernels split every operation evenly over a team of OpenMP threads and wait
at a barrier for the slowest one. By default an idle thread busy-waits there (GNU OpenMP spins about
300,000 times before it sleeps). On a machine whose every core is in use by the team, another process that
takes one core makes one team thread arrive late at each of the thousands of barriers in a training
step, while its team-mates spin on the cores it needs: TIRG training fell to 23% of its quiet speed beside
one other torch process (fair share: 50%).

The policy, chosen once at the start of a command:

* idle OpenMP threads sleep at once (`OMP_WAIT_POLICY=PASSIVE`), unless the user set `OMP_WAIT_POLICY`,
  `GOMP_SPINCOUNT` or `KMP_BLOCKTIME`. OpenMP reads this only when torch is first imported, so
  `prepare_environment()` must run before that (`cirlab.cli.main` does; a program that imports torch
  itself keeps whatever it started with);
* intra-op threads: `--threads N`, else `OMP_NUM_THREADS`, else the cores this process may use (its CPU
  affinity, capped by a cgroup CPU quota). A program that imported torch before cirlab keeps its own count;
* one inter-op thread: eager training and evaluation never use torch's inter-op pool.

DataLoader workers are not chosen here: on the CPU they default to 0 (batches are made in the training
process, so workers never compete with the compute threads); `TrainConfig.workers` sets them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

#: Environment variables that already say how idle OpenMP threads wait; when any is set it is left alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads a process computes with and why."""

    intra_op: int
    inter_op: int
    wait: str  # how idle OpenMP threads wait, in words
    reason: str  # where the intra-op count came from

    def describe(self) -> str:
        return (f"threads: {self.intra_op} intra-op, {self.inter_op} inter-op "
                f"(policy: {self.reason}; idle threads: {self.wait})")


_state: dict[str, object] = {}


def prepare_environment(environ: dict[str, str] | None = None) -> str:
    """Before torch is imported: make idle OpenMP threads sleep instead of spin, unless the user chose.

    Returns the wait policy in words. Once torch is imported OpenMP has read its settings, so nothing is
    changed then (the words say so)."""
    env = os.environ if environ is None else environ
    chosen = [f"{k}={env[k]}" for k in WAIT_VARIABLES if k in env]
    if chosen:
        wait = f"{', '.join(chosen)} from the environment"
    elif "torch" in sys.modules:
        wait = "torch's default (torch was imported before cirlab could choose)"
    else:
        env.update(PASSIVE_WAIT)
        wait = "sleep at once (OMP_WAIT_POLICY=PASSIVE)"
    if environ is None:
        _state.setdefault("wait", wait)
        _state.setdefault("torch_preloaded", "torch" in sys.modules)
    return wait


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs allowed by a cgroup (v2 `cpu.max` or v1 `cpu.cfs_quota_us`) quota, rounded up; None: no quota."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota_us / period_us)) if quota_us > 0 and period_us > 0 else None


def available_cores() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    return max(1, min(cores, limit) if limit else cores)


def choose_policy(requested: int | None = None, environ: dict[str, str] | None = None,
                  torch_preloaded: bool = False, current: int | None = None) -> ThreadPolicy:
    """The thread counts for `--threads requested` (None: not given); see the module docstring for the order."""
    env = os.environ if environ is None else environ
    wait = str(_state.get("wait", "torch's default (cirlab did not choose)"))
    if requested is not None:
        return ThreadPolicy(requested, 1, wait, f"--threads {requested}")
    omp = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if omp.isdigit() and int(omp) > 0:
        return ThreadPolicy(int(omp), 1, wait, f"OMP_NUM_THREADS={omp}")
    if torch_preloaded and current is not None:
        return ThreadPolicy(current, 1, wait, "kept the count of the program that imported torch")
    return ThreadPolicy(available_cores(), 1, wait, "cores available to this process")


def apply_thread_policy(requested: int | None = None, announce: bool = True,
                        stream: TextIO | None = None) -> ThreadPolicy:
    """Choose the policy, set torch's thread counts, and print the one-line choice (once per process)."""
    import torch

    policy = choose_policy(requested, torch_preloaded=bool(_state.get("torch_preloaded", True)),
                           current=torch.get_num_threads())
    torch.set_num_threads(policy.intra_op)
    try:
        torch.set_num_interop_threads(policy.inter_op)
    except RuntimeError:  # the inter-op pool can be sized once, before its first use
        pass
    policy = ThreadPolicy(torch.get_num_threads(), torch.get_num_interop_threads(), policy.wait, policy.reason)
    if announce and not _state.get("announced"):
        _state["announced"] = True
        print(policy.describe(), file=stream or sys.stdout, flush=True)
    return policy


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """`--threads N` for a command that runs a model (applied by `cirlab.cli.main` before the command runs)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="CPU threads for torch (default: the cores this process may use; "
                             "idle threads sleep instead of spinning, see cirlab.utils.threads)")


def apply_from_args(args: argparse.Namespace) -> ThreadPolicy | None:
    """Apply the policy when the parsed command has a `--threads` flag; other commands are left alone."""
    if not hasattr(args, "threads"):
        return None
    return apply_thread_policy(args.threads)
