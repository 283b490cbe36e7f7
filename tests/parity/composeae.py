"""Parity runners: ComposeAE (`composeae_*`) and its real-space ablation (`realconcatae_*`),
ecom-research/ComposeAE `img_text_composition_models.py` + the loss assembly of `main.py`.

The cirlab model is built at the fixture's feature sizes, loaded through `load_reference_state_dict`
(names: `AutoencoderComposition.reference_names()`, plus the release's `a`), and fed the fixture's features
directly (the fixtures bypass the ResNet and BERT, as `feature_bypass` says). The loss cases run
`representations` + `losses_from` (which is exactly what `training_losses` does) with the registered base loss,
then `total_loss` with the model's default weights, i.e. the trainer's path.
"""

from __future__ import annotations

import torch

from cirlab.losses import LOSSES
from cirlab.models import build_model
from cirlab.models.base import ModelConfig
from cirlab.models.composeae import AutoencoderComposition
from tests.parity.harness import Fixture, is_train, runner, set_train_mode

MODEL_NAMES = {"composeae": "composeae", "realconcatae": "realspace_concat_ae"}


def _model(fixture: Fixture) -> AutoencoderComposition:
    z, q = fixture.tensors["input.img_query_features"], fixture.tensors["input.text_features"]
    family = fixture.name.split("_")[0]
    config = ModelConfig(name=MODEL_NAMES[family], image_encoder="small_cnn", text_encoder="lstm",
                         embed_dim=z.shape[1], text_dim=q.shape[1], image_options={"width": 4},
                         text_options={"word_dim": 4, "hidden_dim": 4})
    model = build_model(config, texts=["unused"])
    assert isinstance(model, AutoencoderComposition)
    model.load_reference_state_dict(fixture.prefixed("param."))
    set_train_mode(model, is_train(fixture))
    return model


def _base_loss(fixture: Fixture) -> str:
    call = " ".join(fixture.meta["calls"])
    return "batch_based_classification" if "soft_triplet_loss=False" in call else "soft_triplet"


@runner("composeae_loss", "realconcatae_loss")
def run_loss(fixture: Fixture) -> dict[str, torch.Tensor]:
    loss_name = _base_loss(fixture)
    assert loss_name == "batch_based_classification", "soft-triplet ComposeAE fixtures need the stored triplets"
    model = _model(fixture)
    z, q, y = fixture.input("img_query_features"), fixture.input("text_features"), fixture.input("img_target_features")
    out = model.representations(z, q, y)
    terms = model.losses_from(out, LOSSES.get(loss_name))
    total = model.total_loss(terms)
    assert set(terms) == {"base", "rec_img", "rec_txt"} | ({"symmetry"} if model.symmetric else set())
    produced = {"output.source.repres": out["theta"], "output.source.repr_to_compare_with_source": out["rec_img"],
                "output.source.repr_to_compare_with_mods": out["rec_txt"],
                "output.loss_base": terms["base"], "output.loss_dec_img": terms["rec_img"],
                "output.loss_dec_text": terms["rec_txt"], "output.total_loss": total}
    with torch.no_grad():
        composed, target = model.normalize(out["theta"]), model.normalize(out["target"])
        produced.update({"output.composed_source_normalized": composed, "output.target_normalized": target,
                         "output.logits_base": composed @ target.t()})
        if model.symmetric:
            star, source = model.normalize(out["theta_star"]), model.normalize(model.target_features(z))
            produced.update({"output.composed_target_normalized": star, "output.source_normalized": source,
                             "output.logits_rot_sym": star @ source.t(), "output.loss_rot_sym": terms["symmetry"],
                             "output.conjugate_target.repres": out["theta_star"],
                             "output.conjugate_target.repr_to_compare_with_source": out["rec_img_star"],
                             "output.conjugate_target.repr_to_compare_with_mods": out["rec_txt_star"]})
    total.backward()
    produced.update({"grad.input.img_query_features": z.grad, "grad.input.text_features": q.grad,
                     "grad.input.img_target_features": y.grad})
    produced.update({f"grad.param.{k}": v for k, v in model.reference_grads().items()})
    buffers = dict(model.named_buffers())
    produced.update({f"output.buffers_after.{ref}": buffers[ours] for ours, ref in model.reference_names().items()
                     if ours in buffers})
    return produced
