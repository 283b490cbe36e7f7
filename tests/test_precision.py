"""Mixed precision, torch.compile fallback and CUDA data loading, checked on the CPU (fp32/eager stay the defaults)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from cirlab.evaluation import evaluate_dataset
from cirlab.inference import Pipeline
from cirlab.inference import precision as prec
from cirlab.models import build_model
from cirlab.training import TrainConfig, Trainer, open_dataset
from cirlab.training import trainer as trainer_module
from cirlab.training.precision import compile_model, grad_scaler
from cirlab.training.run_dir import run_preprocess
from cirlab.utils.errors import CirlabError


def tiny_config(root: Path, **changes: object) -> TrainConfig:
    base = dict(data_root=str(root), model=tiny_model_config(), batch_size=4, iters=2, image_size=16,
                checkpoint_every=0, log_every=1, device="cpu")
    base.update(changes)
    return TrainConfig(**base)


def test_defaults_are_fp32_eager_and_fp16_needs_cuda() -> None:
    config = TrainConfig()
    assert (config.precision, config.compile) == ("fp32", False)
    assert TrainConfig.from_dict({**config.to_dict(), "precision": "bf16"}).precision == "bf16"
    cpu = torch.device("cpu")
    with pytest.raises(CirlabError, match="fp16 needs CUDA"):
        prec.check_precision("fp16", cpu)
    with pytest.raises(CirlabError, match="precision must be one of fp32, bf16, fp16, not 'fp8'"):
        prec.check_precision("fp8", cpu)
    assert not grad_scaler(cpu, "fp32").is_enabled()
    with prec.autocast(cpu, "fp32"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    with prec.autocast(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16


def test_bf16_training_on_the_cpu_runs_and_keeps_float32_weights(tiny_css: Path, tmp_path: Path) -> None:
    trainer = Trainer(tiny_config(tiny_css, precision="bf16"), tmp_path / "run", None, progress=False)
    summary = trainer.train()
    assert summary["iterations"] == 2 and not summary["interrupted"]
    assert all(np.isfinite(h["loss"]) for h in trainer.history if "loss" in h)
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_fp16_training_on_the_cpu_is_one_error(tiny_css: Path, tmp_path: Path) -> None:
    with pytest.raises(CirlabError, match="fp16 needs CUDA"):
        Trainer(tiny_config(tiny_css, precision="fp16"), tmp_path / "run", None, progress=False).train()


def test_bf16_evaluation_is_close_to_fp32(tiny_css: Path) -> None:
    config = tiny_config(tiny_css)
    torch.manual_seed(0)
    dataset = open_dataset(config, "test")
    model = build_model(config.model, texts=dataset.train_texts())
    preprocess = run_preprocess(config, model)
    fp32 = evaluate_dataset(Pipeline(model, preprocess, batch_size=64), dataset, progress=False)["metrics"]
    bf16 = evaluate_dataset(Pipeline(model, preprocess, precision="bf16", batch_size=64), dataset,
                            progress=False)["metrics"]
    assert fp32.keys() == bf16.keys()
    assert all(abs(fp32[k] - bf16[k]) <= 0.1 for k in fp32)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    def broken_compile(fn, backend="inductor"):
        def call(*args, **kwargs):
            raise RuntimeError("no C++ compiler\nsecond line")
        return call

    torch.manual_seed(0)
    model = build_model(tiny_model_config(), texts=["make it red", "add a cube"]).eval()
    images = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        expected = model.compose(images, ["make it red", "add a cube"])
    monkeypatch.setattr(torch, "compile", broken_compile)
    compile_model(model)
    with torch.no_grad():
        for _ in range(2):
            torch.testing.assert_close(model.compose(images, ["make it red", "add a cube"]), expected)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2  # one per compiled function that was called (encode_image, compose_features)
    assert all(line.startswith("warning: torch.compile of ") and "no C++ compiler)" in line for line in lines)
    assert set(model.state_dict()) == set(build_model(tiny_model_config(), texts=["a"]).state_dict())


def test_compiled_functions_are_used_when_compiling_works(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def counting_compile(fn, backend="inductor"):
        def call(*args, **kwargs):
            calls.append(fn.__name__)
            return fn(*args, **kwargs)
        return call

    monkeypatch.setattr(torch, "compile", counting_compile)
    model = compile_model(build_model(tiny_model_config(), texts=["a"]).eval())
    with torch.no_grad():
        model.compose(torch.rand(2, 3, 16, 16), ["a", "a"])
        model.embed_target(torch.rand(2, 3, 16, 16))
    assert calls == ["encode_image", "compose_features", "encode_image", "target_features"]


def test_data_loader_workers_only_change_on_cuda(tiny_css: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(tiny_config(tiny_css), tmp_path / "run", None, progress=False)
    assert trainer.loader_workers() == 0
    trainer.device = torch.device("cuda")  # only the device type is read
    monkeypatch.setattr(trainer_module, "available_cores", lambda: 16)
    assert trainer.loader_workers() == 4
    monkeypatch.setattr(trainer_module, "available_cores", lambda: 2)
    assert trainer.loader_workers() == 1
    trainer.config.workers = 3
    assert trainer.loader_workers() == 3
