"""The CPU thread policy: counts, the wait policy set before torch loads OpenMP, the --threads flag, one line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cirlab.cli.main import main
from cirlab.utils import threads


def test_count_comes_from_flag_then_environment_then_host_then_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "available_cores", lambda: 7)
    assert threads.choose_policy(3, environ={"OMP_NUM_THREADS": "5"}).intra_op == 3
    assert threads.choose_policy(None, environ={"OMP_NUM_THREADS": "5"}).intra_op == 5
    assert threads.choose_policy(None, environ={}, torch_preloaded=True, current=2).intra_op == 2
    policy = threads.choose_policy(None, environ={"OMP_NUM_THREADS": ""})
    assert (policy.intra_op, policy.inter_op, policy.reason) == (7, 1, "cores available to this process")


def test_cgroup_quota_caps_the_cores(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert threads.cgroup_cpu_limit(v1) == 3


def test_wait_policy_is_left_to_the_user_when_set() -> None:
    env = {"GOMP_SPINCOUNT": "1000"}
    assert "GOMP_SPINCOUNT=1000 from the environment" in threads.prepare_environment(env)
    assert env == {"GOMP_SPINCOUNT": "1000"}


def test_apply_sets_torch_and_prints_one_line_once(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_state", {"wait": "w", "torch_preloaded": True})
    out = io.StringIO()
    try:
        policy = threads.apply_thread_policy(2, stream=out)
        assert torch.get_num_threads() == 2 == policy.intra_op
        threads.apply_thread_policy(1, stream=out)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("threads: 2 intra-op, ")
    assert "policy: --threads 2" in lines[0]


def test_threads_flag_rejects_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["eval", "some_run", "--threads", "0"])
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err


def _cli_threads(tmp_path: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess:
    """A fresh `cirlab` process with --threads 2 that fails fast (exit 2) after choosing its threads."""
    env = {k: v for k, v in os.environ.items()
           if k not in threads.WAIT_VARIABLES + ("OMP_NUM_THREADS", threads.ADAPTIVE_VARIABLE)}
    env.update(OMP_DISPLAY_ENV="VERBOSE", **extra_env)  # OpenMP prints its settings when torch loads it
    out = subprocess.run([sys.executable, "-m", "cirlab", "query", str(tmp_path / "missing"), "--id", "a",
                          "--text", "x", "--threads", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr
    return out


@pytest.mark.skipif(threads.CpuWatch.open() is None, reason="needs Linux /proc/stat and 2+ CPUs without a quota")
def test_cli_keeps_spinning_wait_and_announces_the_governor(tmp_path: Path) -> None:
    out = _cli_threads(tmp_path, {})
    assert "GOMP_SPINCOUNT = '300000'" in out.stderr  # GNU OpenMP's default spin, untouched
    first = out.stdout.splitlines()[0]
    assert first.startswith("threads: 2 intra-op, 1 inter-op (policy: --threads 2; idle threads: torch's default spin; "
                            "1 thread while other processes use these CPUs)"), first


def test_cli_without_the_governor_sets_passive_wait_before_torch_loads_openmp(tmp_path: Path) -> None:
    """`CIRLAB_ADAPTIVE_THREADS=0`: OpenMP itself reports the passive wait policy, the command prints its choice."""
    out = _cli_threads(tmp_path, {threads.ADAPTIVE_VARIABLE: "0"})
    assert "GOMP_SPINCOUNT = '0'" in out.stderr  # passive: no spinning at all
    first = out.stdout.splitlines()[0]
    assert first == ("threads: 2 intra-op, 1 inter-op (policy: --threads 2; idle threads: sleep at once "
                     "(OMP_WAIT_POLICY=PASSIVE))"), first


class FakeCpus:
    """/proc/stat for CPUs 0 and 1, this process's CPU seconds and a clock, all moved by hand."""

    def __init__(self, path: Path) -> None:
        self.path, self.busy, self.own, self.now = path, 0.0, 0.0, 0.0
        self.write()

    def write(self) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        user = round(self.busy * hz * 0.5)  # user time on cpu0, the rest as system time on cpu1
        system = round(self.busy * hz) - user  # idle and iowait (huge here) must not count, steal must
        self.path.write_text("cpu  1 2 3 4 5 6 7 8 9 10\n"
                             f"cpu0 {user} 0 0 999999 888888 0 0 0 0 0\n"
                             f"cpu1 0 0 {system - 3} 999999 888888 0 0 3 0 0\n"
                             + "cpu2 77777 0 0 0 0 0 0 0 0 0\nintr 1 2 3\n")

    def advance(self, seconds: float, busy: float, own: float) -> None:
        self.now, self.busy, self.own = self.now + seconds, self.busy + busy, self.own + own
        self.write()


def test_governor_drops_to_one_thread_while_others_compute_and_returns(tmp_path: Path) -> None:
    cpus = FakeCpus(tmp_path / "stat")
    watch = threads.CpuWatch(cpus.path, [0, 1], lambda: cpus.own, lambda: cpus.now)
    calls: list[int] = []
    out = io.StringIO()
    gov = threads.ThreadGovernor(2, watch, calls.append, interval=1.0, stream=out)
    cpus.advance(0.5, busy=1.0, own=0.0)  # others busy, but the interval has not passed: no look yet
    assert gov.tick() == 2 and calls == []
    cpus.advance(0.5, busy=1.0, own=1.2)  # over 1 s: 2.0 busy CPU-seconds, 1.2 ours -> others 0.8 cores
    assert gov.tick() == 1 and calls == [1]
    cpus.advance(1.0, busy=1.9, own=0.9)  # a competitor still takes a core
    assert gov.tick() == 1 and calls == [1]
    cpus.advance(1.0, busy=1.25, own=1.0)  # others 0.25 cores: between leave (0.15) and enter (0.3), stay
    assert gov.tick() == 1
    cpus.advance(1.0, busy=1.05, own=1.0)  # others 0.05 cores: the CPUs are free again
    assert gov.tick() == 2 and calls == [1, 2] and gov.switches == 2
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("threads: 1 intra-op (other processes use these CPUs: 0.80 cores")
    assert lines[1].startswith("threads: 2 intra-op (the CPUs are free again: 0.05 cores")


def test_governor_keeps_its_threads_when_the_stat_file_breaks(tmp_path: Path) -> None:
    cpus = FakeCpus(tmp_path / "stat")
    watch = threads.CpuWatch(cpus.path, [0, 1], lambda: cpus.own, lambda: cpus.now)
    gov = threads.ThreadGovernor(2, watch, lambda n: pytest.fail("no switch without a reading"))
    cpus.advance(2.0, busy=3.0, own=0.0)
    cpus.path.write_text("cpu0 1 2 3 4 5 6 7 8\n")  # cpu1 is gone
    assert gov.tick() == 2
    with pytest.raises(KeyError, match="cpu1"):
        watch.busy_seconds()


def test_prepare_environment_spins_only_where_the_governor_can_watch(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: None)
    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh `cirlab` process (restored after the test)
    stat = FakeCpus(tmp_path / "stat").path
    env: dict[str, str] = {}
    assert threads.prepare_environment(env, stat) == "torch's default spin" and env == {}
    env = {threads.ADAPTIVE_VARIABLE: "0"}
    assert "PASSIVE" in threads.prepare_environment(env, stat) and env["OMP_WAIT_POLICY"] == "PASSIVE"
    env = {}
    assert "PASSIVE" in threads.prepare_environment(env, tmp_path / "no_such_stat")
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda root=None: 1)  # a quota below the CPU set
    env = {}
    assert "PASSIVE" in threads.prepare_environment(env, stat)


def test_trainer_lets_the_governor_look_once_per_iteration(tiny_css: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import tiny_model_config

    from cirlab.training import TrainConfig
    from cirlab.training import trainer as trainer_module

    ticks: list[int] = []
    monkeypatch.setattr(trainer_module, "tick", lambda: ticks.append(1))
    config = TrainConfig(data_root=str(tiny_css), model=tiny_model_config(), iters=3, batch_size=4, eval_every=0,
                         checkpoint_every=0, image_size=32)
    trainer_module.Trainer(config, tmp_path / "run", None, progress=False).train()
    assert len(ticks) == 3
