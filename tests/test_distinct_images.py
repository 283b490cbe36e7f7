"""`--distinct-images`: encoding each distinct image of a batch once is the same training step, up to rounding:
the same losses, gradients and batch-norm running statistics as encoding every copy."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from cirlab.losses import LOSSES
from cirlab.models import build_model
from cirlab.training import TrainConfig
from cirlab.training.distinct import encode_distinct, supports_distinct
from cirlab.training.run_dir import make_transform, open_dataset
from cirlab.training.trainer import PairBatches, Trainer
from cirlab.utils.errors import CirlabError


def _step(model: torch.nn.Module, batches: PairBatches, batch: tuple) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)  # the soft triplet loss samples its negatives
    np.random.seed(7)
    loss = model.total_loss(model.training_losses(*batches.features(model, batch, torch.device("cpu")),
                                                  LOSSES.get("soft_triplet")))
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("encoder", ["small_cnn", "resnet18"])
def test_distinct_encoding_is_the_same_step(tiny_css: Path, encoder: str) -> None:
    options = {"width": 8} if encoder == "small_cnn" else {}
    config = TrainConfig(data_root=str(tiny_css), model=tiny_model_config(image_encoder=encoder,
                                                                          image_options=options),
                         batch_size=8, image_size=32)
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    plain = build_model(config.model, texts=dataset.train_texts())
    plain.text_encoder.eval()  # the text side's dropout would draw different masks in the two runs
    distinct = copy.deepcopy(plain)
    transform = make_transform(config, plain, train=True)
    batches = PairBatches(dataset, transform, 8, seed=0)
    fast = PairBatches(dataset, transform, 8, seed=0, distinct=True)
    batch = batches[3]
    src = batch[0]
    assert len(torch.unique(src.flatten(1), dim=0)) == 4  # paired sampling: every source twice
    calls: list[int] = []
    encode = distinct.encode_image
    distinct.encode_image = lambda images: calls.append(len(images)) or encode(images)  # type: ignore[method-assign]
    loss_a, grads_a = _step(plain, batches, batch)
    loss_b, grads_b = _step(distinct, fast, batch)
    assert calls[0] == 4  # the sources went through the encoder once each
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        scale = float(grads_a[name].abs().max())  # float rounding of sums over 4 vs 8 images, through batch norm
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-3, atol=2e-5 * max(scale, 0.05), msg=name)
    for (name, buf_a), (_, buf_b) in zip(plain.named_buffers(), distinct.named_buffers(), strict=True):
        if buf_a.is_floating_point():  # running means and (rescaled) variances
            torch.testing.assert_close(buf_b, buf_a, rtol=1e-5, atol=1e-7, msg=name)
        else:
            assert torch.equal(buf_a, buf_b), name


def test_uneven_repeats_collisions_and_eval_mode_encode_every_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    encoder = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())
    seen: list[int] = []

    def encode(images: torch.Tensor) -> torch.Tensor:
        seen.append(len(images))
        return encoder(images)

    a, b = torch.randn(2, 3, 5, 5)
    encode_distinct(encode, encoder, torch.stack([a, a, b]))  # a twice, b once: batch statistics would differ
    encode_distinct(encode, encoder, torch.stack([a, b, a, b]))
    with monkeypatch.context() as patch:  # every row gets the same fingerprint: a and b collide, the check sees it
        patch.setattr(torch, "linspace", lambda *args, **kwargs: torch.zeros(75, dtype=torch.float64))
        encode_distinct(encode, encoder, torch.stack([a, b, a, b]))
    encoder.eval()
    encode_distinct(encode, encoder, torch.stack([a, b, a, b]))
    assert seen == [3, 2, 4, 4]


def test_encoders_with_dropout_or_cumulative_norm_are_refused(tiny_css: Path, tmp_path: Path) -> None:
    assert not supports_distinct(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)))
    assert not supports_distinct(torch.nn.BatchNorm1d(2, momentum=None))
    assert supports_distinct(torch.nn.BatchNorm1d(2))
    with pytest.raises(CirlabError, match="distinct_images does not combine"):
        TrainConfig(data_root=str(tiny_css), distinct_images=True, compile=True)


def test_trainer_trains_with_distinct_images(tiny_css: Path, tmp_path: Path) -> None:
    config = TrainConfig(data_root=str(tiny_css), model=tiny_model_config(), iters=3, batch_size=4, image_size=32,
                         checkpoint_every=0, distinct_images=True)
    summary = Trainer(config, tmp_path / "run", None, progress=False).train()
    assert summary["iterations"] == 3
