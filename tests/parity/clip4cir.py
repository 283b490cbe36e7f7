"""Parity runners: CLIP4Cir's Combiner (`clip4cir_*`), ABaldrati/CLIP4Cir `src/combiner.py` + the loss lines of
`src/combiner_train.py`.

The cirlab `combiner` model is built at the fixture's constructor sizes, loaded through
`Combiner.load_reference_state_dict`, and fed the fixture's CLIP features directly (the fixtures bypass CLIP).
Composition cases run `Combiner.combine` (what `compose_features` returns, plus lambda); loss cases run
`training_losses` with the registered `batch_based_classification` loss, the trainer's path.
"""

from __future__ import annotations

import torch

from cirlab.losses import LOSSES
from cirlab.models import build_model
from cirlab.models.base import ModelConfig
from cirlab.models.combiner import REFERENCE_NAMES, Combiner
from tests.parity.harness import Fixture, cotangent_sum, is_train, runner, set_train_mode


def _combiner(fixture: Fixture) -> Combiner:
    args = fixture.meta["constructor"]["args"]
    d = int(args["clip_feature_dim"])
    config = ModelConfig(name="combiner", image_encoder="small_cnn", text_encoder="lstm", embed_dim=d, text_dim=d,
                         image_options={"width": 4}, text_options={"word_dim": 4, "hidden_dim": 4},
                         options={"proj_dim": int(args["projection_dim"]), "hidden_dim": int(args["hidden_dim"])})
    model = build_model(config, texts=["unused"])
    assert isinstance(model, Combiner)
    model.load_reference_state_dict(fixture.prefixed("param."))
    set_train_mode(model, is_train(fixture))
    return model


def _param_grads(model: Combiner) -> dict[str, torch.Tensor]:
    own = dict(model.named_parameters())
    return {f"grad.param.{ref}": (own[name].grad if own[name].grad is not None else torch.zeros_like(own[name]))
            for ref, name in REFERENCE_NAMES.items()}


@runner("clip4cir_combine")
def run_combine(fixture: Fixture) -> dict[str, torch.Tensor]:
    model = _combiner(fixture)
    image, text = fixture.input("image_features"), fixture.input("text_features")
    combined, lam = model.combine(image, text)
    assert torch.equal(combined, model.compose_features(image, text))
    cotangent_sum({"combined": combined}, fixture).backward()
    return {"output.combined": combined, "output.dynamic_scalar": lam, "grad.input.image_features": image.grad,
            "grad.input.text_features": text.grad, **_param_grads(model)}


@runner("clip4cir_loss")
def run_loss(fixture: Fixture) -> dict[str, torch.Tensor]:
    model = _combiner(fixture)
    ref, text = fixture.input("reference_image_features"), fixture.input("text_features")
    target = fixture.input("target_image_features")
    assert torch.equal(fixture.input("labels"), torch.arange(ref.shape[0]))  # the loss's own labels
    terms = model.training_losses(ref, text, target, LOSSES.get("batch_based_classification"))
    loss = model.total_loss(terms)
    with torch.no_grad():
        predicted = model.compose_features(ref, text)
        logits = model.normalize(predicted) @ model.normalize(model.target_features(target)).t()
    loss.backward()
    return {"output.predicted": predicted, "output.logits": logits, "output.loss": loss,
            "grad.input.reference_image_features": ref.grad, "grad.input.text_features": text.grad,
            "grad.input.target_image_features": target.grad, **_param_grads(model)}
