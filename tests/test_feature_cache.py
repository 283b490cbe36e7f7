"""The feature cache: frozen encoders only, same pairs as the image pipeline, same features as encoding on the
fly, reused when it matches, and a cached run that evaluates the same end to end from its run directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config

from cirlab.evaluation import evaluate_run, make_cached_eval_fn
from cirlab.models import build_model
from cirlab.training import TrainConfig, Trainer, make_transform, open_dataset
from cirlab.training import feature_cache as fc
from cirlab.training.feature_cache import CachedPairBatches, build_feature_cache
from cirlab.training.trainer import PairBatches
from cirlab.utils.errors import CirlabError


def _config(root: Path, name: str = "combiner", **changes: object) -> TrainConfig:
    model = tiny_model_config(name, freeze_image=True, freeze_text=True,
                              options={"proj_dim": 16, "hidden_dim": 16} if name == "combiner" else {})
    base = dict(data_root=str(root), model=model, loss="batch_based_classification", optimizer="adam", lr=1e-3,
                iters=4, batch_size=8, checkpoint_every=0, device="cpu", feature_cache=True)
    base.update(changes)
    return TrainConfig(**base)


def test_cache_needs_frozen_encoders(tiny_css: Path, tmp_path: Path) -> None:
    config = _config(tiny_css)
    config.model.freeze_text = False
    dataset = open_dataset(config, "train")
    model = build_model(config.model, texts=dataset.train_texts())
    with pytest.raises(CirlabError, match="--feature-cache needs frozen encoders"):
        build_feature_cache(model, dataset, make_transform(config, model, False), tmp_path, "train",
                            dataset.train_texts(), progress=False)


def test_cached_batches_match_the_image_pipeline(tiny_css: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    config = _config(tiny_css, name="crn")  # dict features with variable-length tokens
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    model = build_model(config.model, texts=dataset.train_texts())
    transform = make_transform(config, model, False)
    cache = build_feature_cache(model, dataset, transform, tmp_path, "train", dataset.train_texts(), progress=False)
    cached, plain = CachedPairBatches(dataset, cache, 5, seed=3), PairBatches(dataset, transform, 5, seed=3)
    model.train()  # frozen encoders stay in eval mode, so on-the-fly features equal the cached ones
    src_c, text_c, tgt_c = cached.features(model, cached[7], torch.device("cpu"))
    src_p, text_p, tgt_p = plain.features(model, plain[7], torch.device("cpu"))
    assert cached[7][1] == plain[7][1]
    for key in src_p:
        torch.testing.assert_close(src_c[key], src_p[key], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(tgt_c[key], tgt_p[key], atol=1e-5, rtol=1e-5)
    width = text_p["local.tokens"].shape[1]
    torch.testing.assert_close(text_c["local.tokens"][:, :width], text_p["local.tokens"], atol=1e-5, rtol=1e-5)
    assert not text_c["local.mask"][:, width:].any()

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("a matching cache must be loaded, not rebuilt")

    monkeypatch.setattr(fc, "encode_all", fail)
    again = build_feature_cache(model, dataset, transform, tmp_path, "train", dataset.train_texts(), progress=False)
    assert again.text_list == cache.text_list


def test_cached_training_evaluates_the_same_end_to_end(tiny_css: Path, tmp_path: Path) -> None:
    config = _config(tiny_css)
    run = tmp_path / "run"
    summary = Trainer(config, run, make_cached_eval_fn(config, run, progress=False), progress=False).train()
    assert (run / "feature_cache" / "train" / "images.safetensors").is_file()
    assert (run / "feature_cache" / "test" / "meta.json").is_file()
    end_to_end = evaluate_run(run, progress=False)
    for k in ("recall@1", "recall@10", "recall@50"):
        assert np.isclose(summary["metrics"][k], end_to_end[k], atol=0.02), k
