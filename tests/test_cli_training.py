"""End-to-end behaviour of `cirlab data` -> `train` -> `eval`, resume after SIGKILL, Ctrl-C, and bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cirlab.utils.io import load_tensors

TINY = ["--embed-dim", "32", "--text-dim", "32", "--image-option", "width=8", "--text-option", "word_dim=16",
        "--text-option", "hidden_dim=32"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def cirlab(*args: str, check: bool = True, cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "cirlab.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"cirlab {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc


def start_train(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cirlab.cli", "train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def checkpoint_iteration(run_dir: Path) -> int:
    state = run_dir / "checkpoint" / "state.json"
    try:
        return int(json.loads(state.read_text())["iteration"])
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return 0


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, at_least: int) -> int:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        it = checkpoint_iteration(run_dir)
        if it >= at_least:
            return it
        assert proc.poll() is None, f"training ended before a checkpoint: {proc.stderr.read()[-2000:]}"
        time.sleep(0.02)
    raise AssertionError("no checkpoint within 240 s")


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "model.safetensors")


def test_data_train_eval_smoke(tmp_path: Path) -> None:
    data, run = tmp_path / "css", tmp_path / "run"
    cirlab("data", "css", "--out", str(data), "--train-images", "120", "--test-images", "60", "--seed", "3")
    assert (data / "css_toy_dataset_novel2_small.dup.npy").is_file()
    trained = cirlab("train", "--data-root", str(data), "--out", str(run), "--iters", "12", "--batch-size", "8",
                     "--checkpoint-every", "5", *TINY, "--json")
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["iterations"] == 12 and 0.0 <= summary["recall@1"] <= 1.0
    for name in ("config.json", "model.safetensors", "vocab.json", "metrics.json"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir()), "TensorBoard events missing"
    evaluated = cirlab("eval", str(run), "--json")
    result = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert result["dataset"] == "css" and result["split"] == "test" and result["model"] == "tirg"
    assert result["queries"] > 0 and result["gallery"] == 60
    for k in (1, 5, 10, 50, 100):
        assert 0.0 <= result[f"recall@{k}"] <= 1.0
    ranks = [result[f"recall@{k}"] for k in (1, 5, 10, 50, 100)]
    assert ranks == sorted(ranks), "Recall@K must not decrease with K"
    assert result["recall@1"] == pytest.approx(summary["recall@1"])
    assert json.loads((run / "eval_test.json").read_text())["recall@1"] == result["recall@1"]


def test_seed_repo_flag_spellings_are_accepted(tmp_path: Path, tiny_css: Path) -> None:
    cirlab("train", "--dataset_path", str(tiny_css), "--num_iters", "3", "--batch_size", "4", "--learning_rate",
           "0.02", "--learning_rate_decay_frequency", "2", "--comment", "seedflags", "--log_dir", str(tmp_path),
           "--no-eval", "--image-encoder", "small_cnn", *TINY)  # an explicit encoder wins over the seed's resnet18
    (run,) = [p for p in tmp_path.iterdir() if p.name.endswith("_seedflags")]
    config = json.loads((run / "config.json").read_text())["train"]
    assert (config["iters"], config["batch_size"], config["lr"], config["lr_decay_every"]) == (3, 4, 0.02, 2)
    assert config["model"]["image_encoder"] == "small_cnn"


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path: Path, tiny_css: Path) -> None:
    common = ["--data-root", str(tiny_css), "--iters", "400", "--batch-size", "8", "--checkpoint-every", "10",
              "--no-eval", "--seed", "5", *TINY]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cirlab("train", "--out", str(straight), *common)
    proc = start_train("--out", str(killed), *common)
    wait_for_checkpoint(proc, killed, at_least=20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = checkpoint_iteration(killed)
    assert 0 < stopped_at < 400, "the kill must land mid-run for this test to mean anything"
    cirlab("train", "--out", str(killed), "--resume")
    assert checkpoint_iteration(killed) == 400
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path: Path, tiny_css: Path) -> None:
    run = tmp_path / "run"
    proc = start_train("--data-root", str(tiny_css), "--out", str(run), "--iters", "100000", "--batch-size", "8",
                       "--checkpoint-every", "5", "--no-eval", *TINY)
    wait_for_checkpoint(proc, run, at_least=5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert 5 <= checkpoint_iteration(run) < 100000
    assert (run / "model.safetensors").is_file()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["interrupted"] is True


@pytest.mark.parametrize("args, needle", [
    (["train", "--model", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    (["train", "--dataset", "nosuchset"], "unknown dataset 'nosuchset'"),
    (["train", "--data-root", "/nonexistent/css", "--iters", "1"], "/nonexistent/css"),
    (["train", "--iters", "0"], "--iters must be positive"),
    (["train", "--bogus-flag"], "unrecognized arguments: --bogus-flag"),
    (["eval", "/nonexistent/run"], "run directory not found: /nonexistent/run"),
])
def test_user_errors_are_one_line_and_nonzero(args: list[str], needle: str) -> None:
    proc = cirlab(*args, check=False)
    assert proc.returncode == 2
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_truncated_npy_is_a_clear_error_and_is_left_alone(tmp_path: Path, tiny_css: Path) -> None:
    root = tmp_path / "css"
    root.mkdir()
    original = (tiny_css / "css_toy_dataset_novel2_small.dup.npy").read_bytes()
    broken = root / "css_toy_dataset_novel2_small.dup.npy"
    broken.write_bytes(original[: len(original) // 2])
    proc = cirlab("train", "--data-root", str(root), "--out", str(tmp_path / "run"), "--iters", "1", *TINY,
                  check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(broken) in proc.stderr and "truncated" in proc.stderr
    assert broken.read_bytes() == original[: len(original) // 2]


def test_corrupt_image_names_the_file(tmp_path: Path, tiny_css: Path) -> None:
    import shutil

    root = tmp_path / "css"
    shutil.copytree(tiny_css, root)
    bad = root / "images" / "css_test_000003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    run = tmp_path / "run"
    cirlab("train", "--data-root", str(root), "--out", str(run), "--iters", "2", "--batch-size", "4", "--no-eval",
           *TINY)
    before = (run / "model.safetensors").read_bytes()
    proc = cirlab("eval", str(run), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr
    assert (run / "model.safetensors").read_bytes() == before
    assert not (run / "eval_test.json").exists()


def test_existing_run_is_not_overwritten(tmp_path: Path, tiny_css: Path) -> None:
    run = tmp_path / "run"
    cirlab("train", "--data-root", str(tiny_css), "--out", str(run), "--iters", "2", "--batch-size", "4",
           "--no-eval", *TINY)
    before = (run / "model.safetensors").read_bytes()
    proc = cirlab("train", "--data-root", str(tiny_css), "--out", str(run), "--iters", "2", *TINY, check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert (run / "model.safetensors").read_bytes() == before


def test_empty_modification_text_in_css_file_is_rejected(tmp_path: Path, tiny_css: Path) -> None:
    from cirlab.datasets import build_dataset
    from cirlab.utils.errors import CirlabError

    data = np.load(tiny_css / "css_toy_dataset_novel2_small.dup.npy", allow_pickle=True).item()
    data["test"]["mods"][0]["to_str"] = "  "
    np.save(tmp_path / "css_toy_dataset_novel2_small.dup.npy", data, allow_pickle=True)
    with pytest.raises(CirlabError, match="test mod 0 is malformed"):
        build_dataset("css", tmp_path, "test", preload=False)


def test_demo_writes_report_charts_and_examples(tmp_path: Path) -> None:
    from PIL import Image

    from cirlab.evaluation.plots import SIZE

    out = tmp_path / "demo"
    proc = cirlab("demo", "--out", str(out), "--iters", "4", "--minutes", "5", "--train-images", "120",
                  "--test-images", "60")
    for name in ("report.md", "recall.png", "training.png", "examples.png"):
        assert (out / name).is_file() and str(out / name) in proc.stdout, name
    result = json.loads((out / "run" / "eval_test.json").read_text())
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["iterations"] == 4
    assert [e["iteration"] for e in metrics["history"] if "eval" in e] == [1, 2, 3, 4]  # the curve's recall points
    assert result["queries"] > 0 and result["gallery"] == 60
    report = (out / "report.md").read_text()
    assert f"| {100 * result['recall@1']:.2f} | {100 * result['recall@5']:.2f} |" in report
    assert "![training curve](training.png)" in report and "at the 4 evaluations made during training" in report
    recall_line = next(line for line in proc.stdout.splitlines() if line.strip().startswith("Recall@1 "))
    assert float(recall_line.split()[-1]) == round(100 * result["recall@1"], 2)
    with Image.open(out / "examples.png") as grid:
        assert grid.width > 600 and grid.height > 6 * 112
    for chart in ("recall.png", "training.png"):
        with Image.open(out / chart) as png:
            png.load()
            assert png.format == "PNG" and png.size == SIZE, chart
    again = cirlab("demo", "--out", str(out), "--iters", "4", "--minutes", "5")
    assert "reusing the finished run" in again.stdout
