"""Parity runners: google/tirg (`tirg_*`, `concat_*`), `img_text_composition_models.py`, `torch_functions.py` and
`text_model.py` @ c58daa066d8af1a5b3de1a0ef6d112519ddda611.

The cirlab `tirg` / `concat` model is built at the fixture's feature sizes, loaded through
`load_reference_state_dict` (names: `ReleasedTIRGHead.reference_names()` plus the release's `a`), and fed the
fixture's features directly (the fixtures bypass the ResNet and the LSTM, as `feature_bypass` says). Composition
cases run `compose_features`, with forward hooks on TIRG's gate and residual branches for their recorded outputs.
Loss cases run `training_losses` + `total_loss` (the trainer's path) with the registered base loss; a soft-triplet
case passes the stored triplets to it and is run twice: the default `soft_triplet` (the release's 0.5x gradient)
must give `grad.*`, `soft_triplet_true_grad` on a fresh model must give `output.true_grad.*`. The text case builds
the `lstm` text encoder from the fixture's texts and runs it on the test strings.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from cirlab.encoders import EncoderSpec, resolve_text_encoder
from cirlab.encoders.text.lstm import LSTMTextEncoder
from cirlab.losses import LOSSES
from cirlab.losses.soft_triplet import pairwise_sq_distances
from cirlab.models import build_model
from cirlab.models.base import ModelConfig
from cirlab.models.tirg import ReleasedTIRGHead
from tests.parity.harness import Fixture, cotangent_sum, is_train, runner, set_train_mode

MODEL_NAMES = {"tirg": "tirg", "concat": "concat"}


def _model(fixture: Fixture) -> ReleasedTIRGHead:
    """The fixture's model (by its case-name family), at its sizes, with the released weights and mode."""
    image = fixture.tensors.get("input.img_features", fixture.tensors.get("input.img_query_features"))
    text = fixture.tensors["input.text_features"]
    texts = list(fixture.meta["constructor"]["args"].get("texts") or ["unused"])
    config = ModelConfig(name=MODEL_NAMES[fixture.name.split("_")[0]], image_encoder="small_cnn", text_encoder="lstm",
                         embed_dim=image.shape[1], text_dim=text.shape[1], image_options={"width": 4},
                         text_options={"word_dim": 4, "hidden_dim": 4})
    model = build_model(config, texts=texts)
    assert isinstance(model, ReleasedTIRGHead)
    model.load_reference_state_dict(fixture.prefixed("param."))
    set_train_mode(model, is_train(fixture))
    return model


def _buffers(model: ReleasedTIRGHead) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {f"output.buffers_after.{ref}": state[ours] for ours, ref in model.reference_names().items()
            if ours.endswith(("running_mean", "running_var", "num_batches_tracked"))}


@runner("tirg_compose", "concat_compose")
def run_compose(fixture: Fixture) -> dict[str, torch.Tensor]:
    model = _model(fixture)
    parts: dict[str, torch.Tensor] = {}
    for name in ("gate", "residual"):
        if hasattr(model, name):
            getattr(model, name).register_forward_hook(lambda m, i, out, name=name: parts.__setitem__(name, out))
    image, text = fixture.input("img_features"), fixture.input("text_features")
    composed = model.compose_features(image, text)
    cotangent_sum({"composed": composed}, fixture).backward()
    produced = {"output.composed": composed, "grad.input.img_features": image.grad,
                "grad.input.text_features": text.grad, **_buffers(model)}
    if parts:
        produced.update({"output.gate_logits": parts["gate"], "output.residual": parts["residual"]})
    produced.update({f"grad.param.{k}": v for k, v in model.reference_grads().items()})
    return produced


def _loss_name(fixture: Fixture) -> str:
    return "soft_triplet" if "soft_triplet_loss=True" in " ".join(fixture.meta["calls"]) else \
        "batch_based_classification"


def _run_loss(fixture: Fixture, loss: Callable) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step's loss on a fresh model: (recorded values, gradients under the fixture's names)."""
    model = _model(fixture)
    seen: dict[str, torch.Tensor] = {}
    compose = model.compose_features

    def recording_compose(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        seen["composed"] = compose(image, text)
        return seen["composed"]

    def recording_loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen["query"], seen["target"] = query, target
        return loss(query, target)

    model.compose_features = recording_compose  # observes the real method's output
    inputs = {n: fixture.input(n) for n in ("img_query_features", "text_features", "img_target_features")}
    terms = model.training_losses(inputs["img_query_features"], inputs["text_features"],
                                  inputs["img_target_features"], recording_loss)
    assert set(terms) == {"base"}
    total = model.total_loss(terms)
    total.backward()
    values = {"output.loss": total, "output.composed": seen["composed"],
              "output.composed_normalized": seen["query"], "output.target_normalized": seen["target"],
              "output.logits": (seen["query"] @ seen["target"].t()).detach(), **_buffers(model)}
    grads = {**{f"input.{n}": t.grad for n, t in inputs.items()},
             **{f"param.{k}": v for k, v in model.reference_grads().items()}}
    return values, grads


@runner("tirg_loss", "concat_loss")
def run_loss(fixture: Fixture) -> dict[str, torch.Tensor]:
    name = _loss_name(fixture)
    if name == "batch_based_classification":
        values, grads = _run_loss(fixture, LOSSES.get(name))
        return {**values, **{f"grad.{k}": v for k, v in grads.items()}}
    triplets = fixture.tensors["input.triplets"]
    values, grads = _run_loss(fixture, functools.partial(LOSSES.get("soft_triplet"), triplets=triplets))
    true_values, true_grads = _run_loss(fixture, functools.partial(LOSSES.get("soft_triplet_true_grad"),
                                                                   triplets=triplets))
    torch.testing.assert_close(true_values["output.loss"], values["output.loss"], rtol=0, atol=0)
    return {**values, **{f"grad.{k}": v for k, v in grads.items()},
            **{f"output.true_grad.{k}": v for k, v in true_grads.items()}}


@runner("tirg_soft_triplet_fn")
def run_soft_triplet_fn(fixture: Fixture) -> dict[str, torch.Tensor]:
    """`TripletLoss()(X, triplets)` on X = [query; target]: the registered loss with the stored triplets."""
    triplets = fixture.tensors["input.triplets"]
    out = {}
    for loss_name, key in (("soft_triplet", "grad.input.features"), ("soft_triplet_true_grad", "output.true_grad")):
        x = fixture.input("features")
        b = x.shape[0] // 2
        loss = LOSSES.get(loss_name)(x[:b], x[b:], triplets=triplets)
        loss.backward()
        out[key] = x.grad
        out.setdefault("output.loss", loss)
    out["output.distances"] = pairwise_sq_distances(fixture.input("features", requires_grad=False))
    return out


@runner("tirg_normalization")
def run_normalization(fixture: Fixture) -> dict[str, torch.Tensor]:
    """`NormalizationLayer` is `CompositionModel.normalize`; its own state_dict name `norm_s` is our `norm_scale`."""
    x = fixture.input("x")
    model = build_model(ModelConfig(name="imgonly", image_encoder="small_cnn", embed_dim=x.shape[1],
                                    text_dim=x.shape[1], image_options={"width": 4},
                                    text_options={"word_dim": 4, "hidden_dim": 4}), texts=["unused"])
    with torch.no_grad():
        model.norm_scale.copy_(fixture.tensors["param.norm_s"].reshape(()))
    out = model.normalize(x)
    cotangent_sum({"normalized": out}, fixture).backward()
    return {"output.normalized": out, "grad.input.x": x.grad, "grad.param.norm_s": model.norm_scale.grad}


@runner("tirg_text_lstm")
def run_text_lstm(fixture: Fixture) -> dict[str, torch.Tensor]:
    """The `lstm` text encoder built from the fixture's texts (vocabulary, tokens, ids checked against the json),
    loaded through `LSTMTextEncoder.load_reference_state_dict`, run on the test strings."""
    meta, params = fixture.meta, fixture.prefixed("param.")
    hidden, embed = params["lstm.weight_hh_l0"].shape[1], params["embedding_layer.weight"].shape[1]
    spec = EncoderSpec(out_dim=params["fc_output.1.weight"].shape[0],
                       options={"word_dim": embed, "hidden_dim": hidden})
    build_texts = meta.get("build_texts") or meta["constructor"]["args"]["texts_to_build_vocab"]
    encoder = resolve_text_encoder("lstm")(spec, texts=build_texts)
    assert isinstance(encoder, LSTMTextEncoder)
    vocab, texts = encoder.vocab, meta["test_texts"]
    if "vocab_word2id" in meta:
        assert {w: i for i, w in enumerate(vocab.words)} == meta["vocab_word2id"]
    if "tokens" in meta:
        assert [vocab.tokenize(t) for t in texts] == meta["tokens"]
    if "encoded" in meta:
        assert [vocab.encode(t) for t in texts] == meta["encoded"]
    ids, lengths = encoder._ids(texts)
    assert torch.equal(ids.t(), fixture.tensors["input.token_ids"])
    assert torch.equal(lengths, fixture.tensors["input.lengths"])
    encoder.load_reference_state_dict(params)
    set_train_mode(encoder, is_train(fixture))
    out = encoder(texts)
    cotangent_sum({"text_features": out}, fixture).backward()
    return {"output.text_features": out, **{f"grad.param.{k}": v for k, v in encoder.reference_grads().items()}}
