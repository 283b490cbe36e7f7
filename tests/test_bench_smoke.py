"""The benchmark scripts run at a tiny size and print every row they promise (their figures are not checked)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run_bench(script: str, *args: str, timeout: int = 600) -> dict:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_gpu_tiny_on_the_cpu_has_every_row() -> None:
    result = run_bench("bench_gpu.py", "--tiny", "--device", "cpu", "--threads", "1", "--budget-seconds", "0.02")
    assert result["device_type"] == "cpu" and result["tiny"] and result["device"]
    got = {(r["model"], r["precision"], r["compiled"]) for r in result["rows"]}
    expected = {(m, p, c) for m in ("tirg", "composeae", "crn", "combiner", "gallery") for p in ("fp32", "bf16")
                for c in (False, True)}
    assert got == expected
    for r in result["rows"]:
        assert r["skipped"] is None and r["samples_s"] > 0 and r["iters"] >= 3, r
        assert (r["compile_fell_back"] is False) == r["compiled"], r  # the eager backend traces every model
    assert {"tirg_bf16_over_fp32", "gallery_bf16_compiled_over_eager"} <= set(result["speedups"])


def test_bench_gpu_reports_rows_past_the_deadline_as_skipped() -> None:
    result = run_bench("bench_gpu.py", "--tiny", "--device", "cpu", "--threads", "1", "--budget-seconds", "0.01",
                       "--deadline-seconds", "0")
    assert len(result["rows"]) == 20
    assert [r["skipped"] for r in result["rows"][1:]] == ["deadline"] * 19  # the first row starts at 0 s


def test_bench_eval_prints_floor_ratio_and_memory() -> None:
    result = run_bench("bench_eval.py", "--gallery", "3000", "--queries", "200", "--dim", "16", "--threads", "1")
    assert [r["method"] for r in result["rows"]] == ["full_topk", "topk_chunked", "first_hit_ranks"]
    assert result["first_hit_over_floor"] == result["rows"][-1]["x_floor"] > 0
    assert all("extra_mb" in r and r["seconds"] > 0 for r in result["rows"])


def test_bench_contention_smoke() -> None:
    result = run_bench("bench_contention.py", "--iters", "2", "--warmup", "1", "--train-images", "40",
                       "--batch-size", "4", "--policies", "new", "--conditions", "quiet,busy", "--settle", "0")
    assert [(r["policy"], r["condition"]) for r in result["rows"]] == [("new", "quiet"), ("new", "busy")]
    assert result["rows"][0]["ratio"] == 1.0 and result["rows"][1]["ratio"] > 0
    assert "new_beside_busy_ratio>=0.40" in result["targets"]
    from cirlab.utils.threads import CpuWatch

    expected = ("torch's default spin; 1 thread while other processes use these CPUs" if CpuWatch.open() is not None
                else "idle threads: sleep at once")  # the governor where it can watch the CPUs, else passive wait
    assert expected in result["rows"][0]["threads"]
