"""Parity runners: FiLM + SAN (`filmsan_*`), huubinh49/Composed-Image-Retrieval `img_text_composition_models.py`
(the second `RealSpaceConcatAE`, `FiLM`, `AttentionNet`) + the loss lines of `main.py`.

Each runner builds the cirlab module the fixture names at the fixture's sizes (read from the tensors):
`film_san.FiLM` (`filmsan_film_*`), `film_san.StackedAttention` (`filmsan_san`) or the `film_san` model
(`filmsan_compose_*`, `filmsan_loss`), loads the released weights through the names next to the model
(`REFERENCE_PREFIXES`, `FiLMSAN.reference_names()`), and runs the path training uses: `representations` +
`losses_from` (= `training_losses`) and `total_loss` with the model's default weights. The fixtures bypass
the ResNet trunk and the sentence encoder (their inputs are the layer-4 map and the raw sentence embedding), so
the model is built on encoder stand-ins that only state those sizes and refuse to run.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.losses import LOSSES
from cirlab.models._layers import load_reference_entries
from cirlab.models.base import MODELS, ModelConfig
from cirlab.models.film_san import FiLM, FiLMSAN, StackedAttention
from tests.parity.harness import Fixture, cotangent_sum, grads_of, is_train, runner, set_train_mode


class BypassedImageEncoder(ImageEncoder):
    """States the sizes of the encoder the fixture bypassed; its features come from the fixture."""

    def __init__(self, out_dim: int, map_channels: int) -> None:
        super().__init__()
        self.out_dim, self.map_channels, self.stage_channels = out_dim, map_channels, [map_channels]

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the parity fixture bypasses the image encoder")


class BypassedTextEncoder(TextEncoder):
    def __init__(self, out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, texts: list[str]) -> torch.Tensor:
        raise AssertionError("the parity fixture bypasses the text encoder")


def _load_exact(module: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Load a stand-alone released module whose names are ours (FiLM, AttentionNet): same keys, same shapes."""
    own = module.state_dict()
    assert set(own) == set(params), (sorted(set(own) ^ set(params)))
    module.load_state_dict({k: v.reshape(own[k].shape) for k, v in params.items()})


def _buffers_after(module: nn.Module, names: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    buffers = dict(module.named_buffers())
    names = names if names is not None else {k: k for k in buffers}
    return {f"output.buffers_after.{ref}": buffers[ours] for ours, ref in names.items() if ours in buffers}


def _film_model(fixture: Fixture, params: dict[str, torch.Tensor]) -> FiLMSAN:
    """The `film_san` model at the fixture's sizes, read from the released weights' shapes."""
    blocks = {int(m.group(1)) for k in params if (m := re.match(r"film_img_txt\.res_blocks\.(\d+)\.", k))}
    film_channels = params["film_img_txt.res_blocks.0.conv2.weight"].shape[0]
    d, c = params["fc.4.weight"].shape[0], params["fc.1.weight"].shape[1]
    dt = params["fc_text_output.1.weight"].shape[1]
    config = ModelConfig(name="film_san", embed_dim=d, text_dim=dt,
                         options={"film_blocks": len(blocks), "film_channels": film_channels})
    model = MODELS.get("film_san")(config, BypassedImageEncoder(d, c), BypassedTextEncoder(dt))
    assert isinstance(model, FiLMSAN) and model.mask == "none"  # the release's default
    return model


@runner("filmsan_film")
def run_film(fixture: Fixture) -> dict[str, torch.Tensor]:
    args = fixture.meta["constructor"]["args"]
    x, question = fixture.input("x"), fixture.input("question")
    film = FiLM(question.shape[1], int(args["n_res_blocks"]), int(args["n_channels"]))
    params = fixture.prefixed("param.")
    _load_exact(film, params)
    set_train_mode(film, is_train(fixture))
    seen: dict[str, torch.Tensor] = {}
    film.film_generator.register_forward_hook(lambda m, i, o: seen.__setitem__("film_vector", o))
    for k, block in enumerate(film.res_blocks):
        block.register_forward_hook(lambda m, i, o, k=k: seen.__setitem__(f"block{k}", o))
    out = film(x, question)
    cotangent_sum({"out": out}, fixture).backward()
    return {"output.out": out, **{f"output.{k}": v for k, v in seen.items()}, "grad.input.x": x.grad,
            "grad.input.question": question.grad, **grads_of(dict(film.named_parameters()), "grad.param."),
            **_buffers_after(film)}


@runner("filmsan_san")
def run_san(fixture: Fixture) -> dict[str, torch.Tensor]:
    image, question = fixture.input("image"), fixture.input("question")
    san = StackedAttention(image.shape[-1], question.shape[-1])
    _load_exact(san, fixture.prefixed("param."))
    set_train_mode(san, is_train(fixture))
    out = san(image, question)
    cotangent_sum({"u_2": out.out}, fixture).backward()
    return {"output.u_2": out.out, "output.pi_1": out.pi_1, "output.pi_2": out.pi_2, "grad.input.image": image.grad,
            "grad.input.question": question.grad, **grads_of(dict(san.named_parameters()), "grad.param.")}


@runner("filmsan_compose")
def run_compose(fixture: Fixture) -> dict[str, torch.Tensor]:
    params = fixture.prefixed("param.")
    model = _film_model(fixture, params)
    model.load_reference_state_dict(params)
    train = is_train(fixture)
    set_train_mode(model, train)
    seen: dict[str, torch.Tensor] = {}
    for name, module in (("film_out", model.film), ("maxpool_out", model.film_pool), ("theta_conv", model.film_out)):
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    model.san.register_forward_hook(lambda m, i, o: seen.__setitem__("attention_net_out", o.out))
    x, text, y = fixture.input("x_query"), fixture.input("text_raw"), fixture.input("x_target")
    out = model.representations(x, text, y)
    produced = {"output.repres": out["theta"], "output.repr_to_compare_with_source": out["rec_img"],
                "output.repr_to_compare_with_mods": out["rec_txt"], "output.img_features": out["z"],
                "output.text_features": out["q"], "output.target_features": out["target"],
                **{f"output.hook.{k}": v for k, v in seen.items()}}
    if train:
        terms = model.losses_from(out, LOSSES.get("batch_based_classification"))
        scalar = model.total_loss(terms)
        produced.update({"output.loss.batch_based_classification": terms["base"],
                         "output.loss.L2_loss": terms["rec_img"], "output.loss.L2_loss_text": terms["rec_txt"],
                         "output.loss.total": scalar})
    else:
        scalar = cotangent_sum({"repres": out["theta"], "repr_to_compare_with_source": out["rec_img"],
                                "repr_to_compare_with_mods": out["rec_txt"], "target_features": out["target"]},
                               fixture)
    scalar.backward()
    produced.update({"grad.input.x_query": x.grad, "grad.input.x_target": y.grad, "grad.input.text_raw": text.grad})
    produced.update({f"grad.param.{k}": v for k, v in model.reference_grads().items()})
    produced.update(_buffers_after(model, model.reference_names()))
    return produced


@runner("filmsan_loss")
def run_loss(fixture: Fixture) -> dict[str, torch.Tensor]:
    repres, target = fixture.input("repres"), fixture.input("target_img_features_non_norm")
    rec_img, z = fixture.input("repr_to_compare_with_source"), fixture.input("img_features")
    rec_txt, q = fixture.input("repr_to_compare_with_mods"), fixture.input("text_features")
    d, dt = repres.shape[1], q.shape[1]
    config = ModelConfig(name="film_san", embed_dim=d, text_dim=dt, options={"film_blocks": 1, "film_channels": d})
    model = MODELS.get("film_san")(config, BypassedImageEncoder(d, d), BypassedTextEncoder(dt))
    assert isinstance(model, FiLMSAN)
    params = fixture.prefixed("param.")
    names = {ours: ref for ours, ref in model.reference_names().items() if ref in params}
    assert set(names.values()) == set(params)
    load_reference_entries(model, params, names, "released ImgTextCompositionBase")
    out = {"theta": repres, "target": target, "rec_img": rec_img, "z": z, "rec_txt": rec_txt, "q": q}
    terms = model.losses_from(out, LOSSES.get("batch_based_classification"))
    total = model.total_loss(terms)
    with torch.no_grad():
        composed, target_n = model.normalize(repres), model.normalize(target)
    total.backward()
    grads = model.reference_grads()
    return {"output.composed_source_image": composed, "output.target_img_features": target_n,
            "output.loss.batch_based_classification": terms["base"], "output.loss.L2_loss": terms["rec_img"],
            "output.loss.L2_loss_text": terms["rec_txt"], "output.loss.total": total,
            **{f"grad.input.{k}": v.grad for k, v in (("repres", repres), ("target_img_features_non_norm", target),
                                                      ("repr_to_compare_with_source", rec_img), ("img_features", z),
                                                      ("repr_to_compare_with_mods", rec_txt),
                                                      ("text_features", q))},
            **{f"grad.param.{ref}": grads[ref] for ref in names.values()}}
