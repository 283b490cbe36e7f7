"""The training speed paths keep the arithmetic: the uint8 pixel cache gives the very batches of the per-image
transform, fused SGD the very weights of torch's per-tensor loop, and the CSS trainer uses both. Tiny runs of
bench/bench_train.py and bench/bench_vs_old.py check that they print what they promise (not their figures)."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

import cirlab
from cirlab.datasets import transforms
from cirlab.datasets.transforms import ImageTransform, PixelCache
from cirlab.losses import LOSSES
from cirlab.models import build_model
from cirlab.training import TrainConfig
from cirlab.training.run_dir import make_transform, open_dataset
from cirlab.training.trainer import PairBatches, Trainer, make_optimizer


def _images(seed: int = 0) -> list[Image.Image]:
    """Odd sizes and shapes, one already at the output size (PIL's resize is then a copy)."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
            ((64, 64), (50, 90), (120, 40), (33, 33))]


@pytest.mark.parametrize("pad", ["none", "target_pad", "square_pad"])
def test_pixels_then_to_batch_equal_the_stacked_transform_bit_for_bit(pad: str) -> None:
    transform = ImageTransform(size=64, pad=pad, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    images = _images()
    expected = torch.stack([transform(img) for img in images])
    got = transform.to_batch(torch.from_numpy(np.stack([transform.pixels(img) for img in images])))
    assert got.is_contiguous() and got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected)


def test_only_deterministic_fixed_size_transforms_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ImageTransform(size=64).deterministic and PixelCache.fits(ImageTransform(size=64), 100)
    assert not ImageTransform(size=64, train=True).deterministic  # random crop
    assert ImageTransform(size=0, train=True, flip=False).deterministic
    assert not PixelCache.fits(ImageTransform(size=0), 100)  # each image keeps its own size
    with pytest.raises(ValueError, match="deterministic"):
        ImageTransform(size=64, train=True).pixels(_images()[0])
    monkeypatch.setattr(transforms, "PIXEL_CACHE_BYTES", 3 * 64 * 64 * 10)
    assert PixelCache.fits(ImageTransform(size=64), 10) and not PixelCache.fits(ImageTransform(size=64), 11)


def test_pixel_cache_decodes_each_image_once() -> None:
    images, loads = _images(), []

    def load(i: int) -> Image.Image:
        loads.append(i)
        return images[i]

    transform = ImageTransform(size=64)
    cache = PixelCache(transform, load, len(images))
    first = cache.batch([2, 0, 2])
    again = cache.batch([0, 2, 3, 2])
    assert sorted(loads) == [0, 2, 3]
    assert torch.equal(first, torch.stack([transform(images[i]) for i in (2, 0, 2)]))
    assert torch.equal(again, torch.stack([transform(images[i]) for i in (0, 2, 3, 2)]))


def _config(root: Path, **changes: object) -> TrainConfig:
    return TrainConfig(data_root=str(root), model=tiny_model_config(), batch_size=8, device="cpu", **changes)


def test_css_batches_from_the_pixel_cache_equal_the_per_image_path(tiny_css: Path) -> None:
    config = _config(tiny_css)
    dataset = open_dataset(config, "train")
    model = build_model(config.model, texts=dataset.train_texts())
    transform = make_transform(config, model, train=True)
    cached, plain = PairBatches(dataset, transform, 8, seed=5), PairBatches(dataset, transform, 8, seed=5,
                                                                          pixel_cache=False)
    assert cached.pixels is not None and plain.pixels is None  # CSS trains on a deterministic 64 px transform
    for i in (0, 3, 3, 11):
        (src_c, texts_c, tgt_c), (src_p, texts_p, tgt_p) = cached[i], plain[i]
        assert texts_c == texts_p and torch.equal(src_c, src_p) and torch.equal(tgt_c, tgt_p)
        assert src_c.is_contiguous() and tgt_c.is_contiguous()
    augmented = PairBatches(dataset, make_transform(_config(tiny_css, augment="crop_flip"), model, True), 8, 5)
    assert augmented.pixels is not None  # CSS has no augmentation to turn on (train_augment=False)


def test_random_crops_keep_the_per_image_path(tiny_css: Path) -> None:
    config = _config(tiny_css)
    dataset = open_dataset(config, "train")
    batches = PairBatches(dataset, ImageTransform(size=48, train=True), 8, seed=5)
    assert batches.pixels is None
    assert batches[2][0].shape == (8, 3, 48, 48)


def _train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batches: PairBatches, steps: int) -> None:
    loss_fn = LOSSES.get("soft_triplet")
    model.train()
    for i in range(steps):
        src, texts, tgt = batches[i]
        loss = model.total_loss(model.training_losses(model.encode_image(src), model.encode_text(texts),
                                                      model.encode_image(tgt), loss_fn))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_training_steps_with_the_speed_paths_give_the_same_weights(tiny_css: Path) -> None:
    """Pixel cache + fused SGD against the per-image transform + torch's per-tensor SGD loop: equal weights."""
    config = _config(tiny_css)
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    fast = build_model(config.model, texts=dataset.train_texts())
    slow = copy.deepcopy(fast)
    transform = make_transform(config, fast, train=True)
    fast_opt = make_optimizer(config, fast)
    assert all(group["fused"] for group in fast_opt.param_groups)  # this torch fuses SGD on the CPU
    slow_opt = torch.optim.SGD(slow.parameter_groups(config.lr, config.trunk_lr_mult()), lr=config.lr,
                               momentum=config.momentum, weight_decay=config.weight_decay, foreach=False)
    torch.manual_seed(1)
    _train_steps(fast, fast_opt, PairBatches(dataset, transform, 8, seed=2), 3)
    torch.manual_seed(1)  # the text encoder's dropout draws the same masks
    _train_steps(slow, slow_opt, PairBatches(dataset, transform, 8, seed=2, pixel_cache=False), 3)
    assert not _same_weights(fast, build_model(config.model, texts=dataset.train_texts()))  # it did train
    assert _same_weights(fast, slow)


@pytest.mark.parametrize("name", ["composeae", "film_san"])
def test_fused_sgd_equals_the_loop_on_other_models(name: str, tiny_css: Path) -> None:
    options = {"film_san": {"film_channels": 8, "film_blocks": 1}}.get(name, {})
    config = TrainConfig(data_root=str(tiny_css), model=tiny_model_config(name, options=options), batch_size=8,
                         device="cpu")
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    fast = build_model(config.model, texts=dataset.train_texts())
    slow = copy.deepcopy(fast)
    batches = PairBatches(dataset, make_transform(config, fast, train=True), 8, seed=2)
    slow_opt = torch.optim.SGD(slow.parameter_groups(config.lr, config.trunk_lr_mult()), lr=config.lr,
                               momentum=config.momentum, weight_decay=config.weight_decay, foreach=False)
    for model, optimizer in ((fast, make_optimizer(config, fast)), (slow, slow_opt)):
        torch.manual_seed(1)
        _train_steps(model, optimizer, batches, 2)
    assert _same_weights(fast, slow)


def test_the_trainer_uses_the_pixel_cache_on_css(tiny_css: Path, tmp_path: Path) -> None:
    trainer = Trainer(_config(tiny_css, iters=2, checkpoint_every=0, log_every=1), tmp_path / "run", progress=False)
    trainer.train()
    assert isinstance(trainer.batches, PairBatches) and trainer.batches.pixels is not None
    assert trainer.batches.pixels.filled.any()


def _bench(script: str, *args: str) -> dict:
    bench = Path(__file__).resolve().parents[1] / "bench" / script
    out = subprocess.run([sys.executable, str(bench), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_bench_train_reports_every_row_and_the_step_breakdown() -> None:
    result = _bench("bench_train.py", "--iters", "2", "--warmup", "1", "--block", "1", "--batch-size", "4",
                    "--train-images", "40", "--encoders", "small_cnn", "--precision", "fp32,bf16",
                    "--memory-format", "contiguous,channels_last", "--distinct-images", "off,on", "--threads", "1")
    rows = {(r["precision"], r["channels_last"], r["distinct_images"]): r for r in result["rows"]}
    assert set(rows) == {(p, c, d) for p in ("fp32", "bf16") for c in (False, True) for d in (False, True)}
    for r in rows.values():
        assert r["iters"] == 2 and r["samples_s"] > 0
        assert all(r[f"{part}_ms"] > 0 for part in ("load", "forward", "backward", "optimizer"))


def _load_bench_vs_old() -> object:
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_vs_old.py"
    spec = importlib.util.spec_from_file_location("bench_vs_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_vs_old_alternates_the_sides_and_reports_the_ratios(monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench_vs_old()
    speeds = {("old", "fp32"): 50.0, ("new", "fp32"): 60.0, ("new", "bf16"): 90.0}

    def fake_run(side: str, src: Path, encoder: str, precision: str, *rest: object) -> dict:
        return {"side": side, "encoder": encoder, "precision": precision, "cirlab": str(src / "cirlab"),
                "threads": "-", "wait": "-", "samples_s": speeds[side, precision], "seconds": 1.0}

    monkeypatch.setattr(bench, "run_one", fake_run)
    monkeypatch.setattr(sys, "argv", ["bench_vs_old.py", "--old-src", str(bench.REPO), "--encoders", "resnet18",
                                      "--precision", "bf16", "--rounds", "2", "--train-images", "20"])
    assert bench.main() == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(r["round"], r["side"], r["precision"]) for r in result["runs"]] == [
        (0, "old", "fp32"), (0, "new", "fp32"), (0, "new", "bf16"),
        (1, "new", "bf16"), (1, "new", "fp32"), (1, "old", "fp32")]
    rows = {r["precision"]: r for r in result["rows"]}
    assert rows["fp32"]["new_over_old"] == 1.2 and rows["bf16"]["new_over_old"] == 1.8
    assert rows["bf16"]["new_over_reference"] == round(1.8 * 74.5 / 70.2, 3)


def test_bench_vs_old_child_reads_samples_per_second_off_the_trainer_history(
        tiny_css: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load_bench_vs_old()
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # the child's prepare_environment then leaves os.environ alone
    args = argparse.Namespace(data=str(tiny_css), encoder="small_cnn", precision="fp32", batch_size=4, iters=3,
                              warmup=1, threads=1)
    assert bench.child(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["samples_s"] > 0 and result["seconds"] > 0
    assert result["samples_s"] == pytest.approx(3 * 4 / result["seconds"], rel=0.01)
    assert Path(result["cirlab"]) == Path(cirlab.__file__).parent
