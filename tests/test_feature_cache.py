"""The feature cache: frozen encoders only, same pairs as the image pipeline, same features as encoding on the
fly, reused when it matches, and a cached run that evaluates the same end to end from its run directory.
Texts that `sample_pairs` draws beyond `train_texts()` (FashionIQ, Fashion200k, MIT-States) are encoded on first
use, saved as shards, and give the same bits however and whenever they were encoded (resume included)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from test_datasets_fashion200k import make_fashion200k
from test_datasets_fashioniq import make_fashioniq
from test_datasets_mitstates import make_mitstates

from cirlab.evaluation import evaluate_run, make_cached_eval_fn
from cirlab.inference import RunSpec
from cirlab.inference import feature_cache as fc
from cirlab.inference.feature_cache import build_feature_cache
from cirlab.models import CompositionModel, build_model
from cirlab.training import TrainConfig, Trainer, make_transform, open_dataset
from cirlab.training.feature_cache import CachedPairBatches
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
    evaluate = make_cached_eval_fn(RunSpec.from_train_dict(config.to_dict()), run, progress=False)
    summary = Trainer(config, run, evaluate, progress=False).train()
    assert (run / "feature_cache" / "train" / "images.safetensors").is_file()
    assert (run / "feature_cache" / "test" / "meta.json").is_file()
    end_to_end = evaluate_run(run, progress=False)
    for k in ("recall@1", "recall@10", "recall@50"):
        assert np.isclose(summary["metrics"][k], end_to_end[k], atol=0.02), k


BUILDERS = {"fashioniq": make_fashioniq, "fashion200k": make_fashion200k, "mitstates": make_mitstates}


def _drawn_texts(config: TrainConfig) -> set[str]:
    """Every text the trainer's batches 0 .. iters-1 contain (CachedPairBatches draws batch i with rng([seed, i]))."""
    dataset = open_dataset(config, config.train_split)
    return {p.text for i in range(config.iters)
            for p in dataset.sample_pairs(np.random.default_rng([config.seed, i]), config.batch_size)}


@pytest.mark.parametrize("name", BUILDERS)
def test_cached_training_encodes_the_drawn_texts_that_train_texts_lacks(name: str, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc, "FLUSH_EVERY", 2)
    config = _config(BUILDERS[name](tmp_path / name), dataset=name, image_size=32, iters=3, batch_size=4)
    run = tmp_path / "run"
    Trainer(config, run, None, progress=False).train()  # failed at the first batch with a train_texts()-only cache
    extra = _drawn_texts(config) - set(open_dataset(config, "train").train_texts())
    assert extra, f"{name}: the sampled texts should include some that train_texts() does not list"
    cache = fc.FeatureCache.load(run / "feature_cache" / "train")
    shards = set(cache.text_list[cache.listed:])
    assert shards <= extra and len(extra - shards) < fc.FLUSH_EVERY  # only the last, unflushed ones are missing
    model = CompositionModel.from_pretrained(run)
    for text in sorted(shards):  # the frozen encoder in eval mode without gradients, one text at a time
        assert torch.equal(cache.text_feats([text]), fc.encode_texts_eval(model, [text])), text
        torch.testing.assert_close(cache.text_feats([text]), model.encode_text([text]), atol=1e-6, rtol=1e-6)


def test_cached_training_resumes_bit_identically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fc, "FLUSH_EVERY", 3)
    root = make_fashioniq(tmp_path / "fiq")

    def config(iters: int) -> TrainConfig:
        return _config(root, dataset="fashioniq", image_size=32, iters=iters, batch_size=4)

    Trainer(config(4), tmp_path / "straight", None, progress=False).train()
    Trainer(config(2), tmp_path / "resumed", None, progress=False).train()
    assert list((tmp_path / "resumed" / "feature_cache" / "train").glob("extras-*.json"))  # read back on resume
    Trainer(config(4), tmp_path / "resumed", None, progress=False).train(resume=True)
    a = CompositionModel.from_pretrained(tmp_path / "straight").state_dict()
    b = CompositionModel.from_pretrained(tmp_path / "resumed").state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_on_demand_token_features_do_not_depend_on_history(tmp_path: Path) -> None:
    config = _config(make_fashioniq(tmp_path / "fiq"), name="crn", dataset="fashioniq", image_size=32)
    dataset = open_dataset(config, "train")
    torch.manual_seed(0)
    model = build_model(config.model, texts=dataset.train_texts())
    transform = make_transform(config, model, False)
    listed = dataset.train_texts()

    def encode(texts: list[str]) -> object:
        return fc.encode_texts_eval(model, texts)

    short, long = "Has pattern 0", "is much longer than any caption listed for this tiny training split"
    queries = [short, listed[0], long]
    fresh = build_feature_cache(model, dataset, transform, tmp_path / "a", "train", listed, progress=False)
    with pytest.raises(CirlabError, match="text not in the feature cache"):
        fresh.text_feats([short])  # without an encoder (evaluation), a missing text is still an error
    first = fresh.text_feats(queries, encode=encode)
    other = build_feature_cache(model, dataset, transform, tmp_path / "b", "train", listed, progress=False)
    other.text_feats([long + " and longer still, much longer", short], encode=encode)
    other.flush()  # `short` now comes from a saved shard, `long` is encoded in a batch of other texts
    assert torch.equal(fc.encode_texts_eval(model, [short])["local.tokens"],
                       first["local.tokens"][:1, :len(short.split())])
    for again in (other.text_feats(queries, encode=encode),
                  fc.FeatureCache.load(tmp_path / "b" / "feature_cache" / "train").text_feats(queries, encode=encode)):
        assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    rebuilt = build_feature_cache(model, dataset, transform, tmp_path / "b", "train", listed[:1], progress=False)
    assert rebuilt.text_list == listed[:1] and not list((tmp_path / "b" / "feature_cache" / "train").glob("extras-*"))
