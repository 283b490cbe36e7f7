"""CPU thread policy: how many threads torch computes with, and how its idle OpenMP threads wait.

Why this exists: torch's CPU kernels split every operation evenly over a team of OpenMP threads and wait
at a barrier for the slowest one. By default an idle thread busy-waits there (GNU OpenMP spins about
300,000 times before it sleeps). On a machine whose every core is in use by the team, another process that
takes one core makes one team thread arrive late at each of the thousands of barriers in a training
step, while its team-mates spin on the cores it needs: TIRG training fell to 23% of its quiet speed beside
one other torch process (fair share: 50%).

The policy, chosen once at the start of a command:

* intra-op threads: `--threads N`, else `OMP_NUM_THREADS`, else the cores this process may use (its CPU
  affinity, capped by a cgroup CPU quota). A program that imported torch before cirlab keeps its own count;
* one inter-op thread: eager training and evaluation never use torch's inter-op pool;
* idle OpenMP threads keep torch's default (a short spin, the fastest on a quiet machine), and a
  `ThreadGovernor` watches the CPUs: while other processes (or the hypervisor's steal) take 0.3 cores or
  more on them, torch computes with one thread (no team, no barrier to wait at), and it goes back
  to N threads below 0.15 cores. The training loop and the batched embedding loop call `tick()` once per
  batch; it samples `/proc/stat` at most once a second. Measured with `bench/bench_contention.py`;
* where the governor cannot watch (no `/proc/stat`, a cgroup quota smaller than the CPU set, whose
  `/proc/stat` counts other containers, or `CIRLAB_ADAPTIVE_THREADS=0`) idle threads sleep at once instead
  (`OMP_WAIT_POLICY=PASSIVE`): no cliff under load, at a cost of 2-15% of quiet speed. A user's `OMP_WAIT_POLICY`,
  `GOMP_SPINCOUNT` or `KMP_BLOCKTIME` is always left alone. OpenMP reads these only when torch is first
  imported, so `prepare_environment()` must run before that (`cirlab.cli.main` does).

DataLoader workers are not chosen here: on the CPU they default to 0 (batches are made in the training
process, so workers never compete with the compute threads); `TrainConfig.workers` sets them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

#: Environment variables that already say how idle OpenMP threads wait; when any is set it is left alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE_WAIT = {"OMP_WAIT_POLICY": "PASSIVE"}
#: `CIRLAB_ADAPTIVE_THREADS=0` turns the governor off (the thread count stays fixed; idle threads then sleep).
ADAPTIVE_VARIABLE = "CIRLAB_ADAPTIVE_THREADS"
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class ThreadPolicy:
    """The threads a process computes with and why."""

    intra_op: int
    inter_op: int
    wait: str  # how idle OpenMP threads wait, in words
    reason: str  # where the intra-op count came from

    adaptive: bool = False  # a ThreadGovernor drops to one thread while other processes use the CPUs

    def describe(self) -> str:
        extra = "; 1 thread while other processes use these CPUs" if self.adaptive else ""
        return (f"threads: {self.intra_op} intra-op, {self.inter_op} inter-op "
                f"(policy: {self.reason}; idle threads: {self.wait}{extra})")


_state: dict[str, object] = {}


def prepare_environment(environ: dict[str, str] | None = None, stat_path: Path = PROC_STAT) -> str:
    """Before torch is imported: keep torch's spinning wait where the governor can watch the CPUs, else make
    idle OpenMP threads sleep at once; a wait the user chose is left alone.

    Returns the wait policy in words. Once torch is imported OpenMP has read its settings, so nothing is
    changed then (the words say so)."""
    env = os.environ if environ is None else environ
    chosen = [f"{k}={env[k]}" for k in WAIT_VARIABLES if k in env]
    adaptive = env.get(ADAPTIVE_VARIABLE, "1") != "0" and CpuWatch.open(stat_path) is not None
    if chosen:
        wait = f"{', '.join(chosen)} from the environment"
    elif "torch" in sys.modules:
        wait = "torch's default (torch was imported before cirlab could choose)"
    elif adaptive:
        wait = "torch's default spin"
    else:
        env.update(PASSIVE_WAIT)
        wait = "sleep at once (OMP_WAIT_POLICY=PASSIVE)"
    if environ is None:
        _state.setdefault("wait", wait)
        _state.setdefault("torch_preloaded", "torch" in sys.modules)
        _state.setdefault("adaptive", adaptive)
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


class CpuWatch:
    """CPU time that others (other processes, the hypervisor's steal) take on this process's CPUs.

    Reads the per-CPU lines of `/proc/stat` for the CPUs in this process's affinity mask and subtracts this
    process's own CPU time (all its threads, `os.times()`)."""

    def __init__(self, stat_path: Path, cpus: list[int], own_seconds: Callable[[], float],
                 clock: Callable[[], float]) -> None:
        self.stat_path, self.cpus, self.own_seconds, self.clock = stat_path, cpus, own_seconds, clock
        self.tick_seconds = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self.last = self.sample()

    @classmethod
    def open(cls, stat_path: Path = PROC_STAT, own_seconds: Callable[[], float] | None = None,
             clock: Callable[[], float] = time.monotonic) -> CpuWatch | None:
        """A watch over this process's CPUs, or None where it cannot see them truthfully (no `/proc/stat`, or
        a cgroup quota below the CPU count: then `/proc/stat` also counts other containers' work)."""
        try:
            cpus = sorted(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return None
        limit = cgroup_cpu_limit()
        if len(cpus) < 2 or (limit is not None and limit < len(cpus)):
            return None
        own = own_seconds or (lambda: sum(os.times()[:2]))
        try:
            return cls(stat_path, cpus, own, clock)
        except (OSError, ValueError, KeyError):
            return None

    def busy_seconds(self) -> float:
        """Seconds the watched CPUs spent not idle since boot (user, nice, system, irq, softirq, steal)."""
        wanted, total = {f"cpu{c}" for c in self.cpus}, 0
        seen = set()
        for line in self.stat_path.read_text().splitlines():
            name, _, rest = line.partition(" ")
            if name in wanted:
                fields = [int(v) for v in rest.split()]
                total += sum(fields[:3]) + sum(fields[5:8])  # skip idle and iowait
                seen.add(name)
        if seen != wanted:
            raise KeyError(f"{self.stat_path} lacks {sorted(wanted - seen)}")
        return total * self.tick_seconds

    def sample(self) -> tuple[float, float, float]:
        return self.clock(), self.busy_seconds(), self.own_seconds()

    def others(self) -> float:
        """Cores' worth of CPU that others used since the last call."""
        now = self.sample()
        (t0, busy0, own0), (t1, busy1, own1) = self.last, now
        self.last = now
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9)


class ThreadGovernor:
    """Torch's intra-op threads: `high` while the CPUs are free, one while others use them.

    `tick()` is cheap; at most every `interval` seconds it asks the `CpuWatch` how much CPU others took
    since the last look. At `enter` cores or more it drops to one thread (a team of spinning threads that
    shares its cores falls to a fraction of fair share, one thread does not); at `leave` or less it goes
    back up."""

    def __init__(self, high: int, watch: CpuWatch, set_threads: Callable[[int], None],
                 interval: float = 1.0, enter: float = 0.3, leave: float = 0.15,
                 stream: TextIO | None = None) -> None:
        self.high, self.watch, self.set_threads = high, watch, set_threads
        self.interval, self.enter, self.leave = interval, enter, leave
        self.threads, self.switches, self.stream = high, 0, stream
        self.next_look = watch.clock() + interval

    def tick(self) -> int:
        """Look at the CPUs when `interval` has passed; returns the thread count now in force."""
        now = self.watch.clock()
        if now < self.next_look:
            return self.threads
        self.next_look = now + self.interval
        try:
            others = self.watch.others()
        except (OSError, ValueError, KeyError):  # e.g. /proc/stat lost a CPU line (hot-unplug): keep the count
            return self.threads
        want = 1 if others >= self.enter else self.high if others <= self.leave else self.threads
        if want != self.threads:
            self.set_threads(want)
            self.threads, self.switches = want, self.switches + 1
            if self.stream is not None:
                why = "other processes use these CPUs" if want == 1 else "the CPUs are free again"
                print(f"threads: {want} intra-op ({why}: {others:.2f} cores)", file=self.stream, flush=True)
        return self.threads


def governor() -> ThreadGovernor | None:
    """The process's governor (set by `apply_thread_policy`), None when the thread count is fixed."""
    gov = _state.get("governor")
    return gov if isinstance(gov, ThreadGovernor) else None


def tick() -> None:
    """Once per batch of a long loop (training, embedding): lets the governor adapt the thread count."""
    gov = governor()
    if gov is not None:
        gov.tick()


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
    intra = torch.get_num_threads()
    watch = CpuWatch.open() if _state.get("adaptive") and intra > 1 else None
    _state["governor"] = (ThreadGovernor(intra, watch, torch.set_num_threads, stream=sys.stderr)
                          if watch is not None else None)
    policy = ThreadPolicy(intra, torch.get_num_interop_threads(), policy.wait, policy.reason, watch is not None)
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
                        help="CPU threads for torch (default: the cores this process may use; one while "
                             "other processes use those CPUs, see cirlab.utils.threads)")


def apply_from_args(args: argparse.Namespace) -> ThreadPolicy | None:
    """Apply the policy when the parsed command has a `--threads` flag; other commands are left alone."""
    if not hasattr(args, "threads"):
        return None
    return apply_thread_policy(args.threads)
