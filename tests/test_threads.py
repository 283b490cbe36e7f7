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


def test_cli_sets_passive_wait_before_torch_loads_openmp(tmp_path: Path) -> None:
    """A fresh `cirlab` process: OpenMP itself reports the passive wait policy, the command prints its choice."""
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARIABLES + ("OMP_NUM_THREADS",)}
    env["OMP_DISPLAY_ENV"] = "TRUE"  # OpenMP prints its settings when torch loads it
    out = subprocess.run([sys.executable, "-m", "cirlab", "query", str(tmp_path / "missing"), "--id", "a",
                          "--text", "x", "--threads", "1"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 2, out.stderr
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in out.stderr
    assert out.stdout.splitlines()[0].startswith("threads: 1 intra-op, 1 inter-op (policy: --threads 1; idle threads:"
                                                 " sleep at once")
