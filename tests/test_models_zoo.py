"""The model zoo (ComposeAE family, FiLM+SAN, CRN, Combiner): shapes, gradient flow, auxiliary losses that fall
on a tiny overfit batch, batch-size agnosticism, paper initialisations, lr groups and run-directory reloads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from cirlab.losses import LOSSES
from cirlab.models import CompositionModel, build_model
from cirlab.utils.errors import CirlabError

ZOO_OPTIONS: dict[str, dict] = {
    "composeae": {},
    "realspace_concat_ae": {},
    "composeae_xattn": {"xattn_tokens": 4, "xattn_heads": 2},
    "film_san": {"film_channels": 16, "film_blocks": 2},
    "crn": {},
    "combiner": {},
}
ZOO = list(ZOO_OPTIONS)
TEXTS = ["add large red circle to top-left", "remove blue triangle", "make middle-center object yellow",
         "make top-right rectangle large", "add small green square to bottom-right", "remove gray circle"]
#: parameters that legitimately get no gradient: map-based models skip the encoder's pooled projection, CRN
#: reads the LSTM's token outputs and skips its sentence projection; as released, CRN's hierarchical aggregation
#: (`final_fc`) and cross relation are built and reach no loss by default.
UNUSED = {"film_san": ("image_encoder.proj.",), "crn": ("image_encoder.proj.", "image_encoder_global.proj.",
                                                        "text_encoder.fc.", "text_encoder_global.fc.",
                                                        *(f"networks.{k}.{m}." for k in ("local", "global")
                                                          for m in ("img_model.final_fc", "relation")))}


def _model(name: str, **changes: object) -> torch.nn.Module:
    options = {**ZOO_OPTIONS[name], **changes.pop("options", {})}  # type: ignore[dict-item]
    return build_model(tiny_model_config(name, options=options, **changes), texts=TEXTS)


def _batch(b: int, size: int = 32) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    g = torch.Generator().manual_seed(b)
    return (torch.randn(b, 3, size, size, generator=g), (TEXTS * b)[:b], torch.randn(b, 3, size, size, generator=g))


def _terms(model: torch.nn.Module, batch: tuple, loss: str = "batch_based_classification") -> dict[str, torch.Tensor]:
    src, texts, tgt = batch
    return model.training_losses(model.encode_image(src), model.encode_text(texts), model.encode_image(tgt),
                                 LOSSES.get(loss))


@pytest.mark.parametrize("name", ZOO)
def test_shapes_and_gradients_reach_every_learning_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = _model(name)
    src, texts, tgt = _batch(4)
    model.total_loss(_terms(model, (src, texts, tgt), "soft_triplet")).backward()
    skip = UNUSED.get(name, ())
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and not n.startswith(skip) and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
    model.eval()
    assert model.compose(src, texts).shape == (4, 32)
    assert model.embed_target(tgt).shape == (4, 32)


@pytest.mark.parametrize("name", ZOO)
def test_auxiliary_losses_are_finite_and_fall_on_an_overfit_batch(name: str) -> None:
    """On fixed (frozen-encoder) features, so that reconstruction targets do not move while the head learns, and
    without dropout, whose noise dominates a 6-pair batch at these tiny widths."""
    torch.manual_seed(0)
    model = _model(name, freeze_image=True, freeze_text=True)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = _batch(6)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    history = []
    for _ in range(25):
        terms = _terms(model, batch)
        assert all(torch.isfinite(v) for v in terms.values()), terms
        history.append({k: float(v.detach()) for k, v in terms.items()})
        optimizer.zero_grad()
        model.total_loss(terms).backward()
        optimizer.step()
    first, last = history[0], history[-1]
    assert sum(model.loss_weights.get(k, 1.0) * v for k, v in last.items()) < \
        0.7 * sum(model.loss_weights.get(k, 1.0) * v for k, v in first.items())
    # CRN's mutual-learning terms start near zero (both networks start alike) and measure disagreement
    falling = [k for k in first if k.split(".")[-1] not in ("mul_kl", "img")]
    assert len(falling) >= 1
    for k in falling:
        assert last[k] < first[k], (k, first[k], last[k])


@pytest.mark.parametrize("b", [1, 32, 33])
def test_composeae_is_batch_size_agnostic(b: int) -> None:
    torch.manual_seed(0)
    model = _model("composeae")
    batch = _batch(b, size=16)
    terms = _terms(model, batch, "batch_based_classification" if b == 1 else "soft_triplet")
    assert set(terms) == {"base", "rec_img", "rec_txt", "symmetry"}
    assert all(torch.isfinite(v) for v in terms.values())
    model.total_loss(terms).backward()
    model.eval()
    assert model.compose(batch[0], batch[1]).shape == (b, 32)


def test_composeae_conjugate_rotation_and_paper_weights() -> None:
    torch.manual_seed(0)
    model = _model("composeae").eval()
    z, q = torch.randn(3, 32), torch.randn(3, 32)
    assert model.branch_weights.tolist() == [10.0, 1.0]
    assert model.loss_weights == {"rec_img": 0.1, "rec_txt": 0.1, "symmetry": 0.01}
    assert not torch.allclose(model.theta(z, q), model.theta(z, q, conjugate=True))


def test_composeae_ablations_switch_branches_off() -> None:
    model = _model("composeae", options={"use_rho_conv": False})
    assert model.rho_conv is None and model.rho is not None
    with pytest.raises(CirlabError, match="cannot both be false"):
        _model("composeae", options={"use_rho": False, "use_rho_conv": False})


def test_film_san_branch_weights_train_at_a_hundredth_of_the_lr() -> None:
    model = _model("film_san")
    assert model.branch_weights.tolist() == pytest.approx([0.7, 0.3])
    groups = {g["name"]: g for g in model.parameter_groups(0.01, 0.1)}
    assert groups["branch_weights"]["lr_mult"] == 0.01 and groups["branch_weights"]["params"] == [model.branch_weights]
    assert groups["backbone"]["lr_mult"] == 0.1
    counted = sum(len(g["params"]) for g in groups.values())
    assert counted == sum(1 for p in model.parameters() if p.requires_grad)
    overridden = _model("film_san", options={"lr_mults": {"branch_weights": 1.0}})
    assert {g["name"]: g["lr_mult"] for g in overridden.parameter_groups(0.01, 1.0)}["branch_weights"] == 1.0
    with pytest.raises(CirlabError, match="no learning-rate group 'nope'"):
        _model("film_san", options={"lr_mults": {"nope": 2.0}}).parameter_groups(0.01, 1.0)


def test_film_san_paper_mask_is_an_option_and_needs_matching_widths() -> None:
    """The release applies no mask (default); the paper's m2 on the FiLM channels is `mask=paper`."""
    options = {"film_channels": 32}
    torch.manual_seed(0)
    released = _model("film_san", options=options).eval()
    torch.manual_seed(0)
    paper = _model("film_san", options={**options, "mask": "paper"}).eval()
    assert released.mask == "none" and paper.mask == "paper"
    src, texts, _ = _batch(2)
    assert not torch.allclose(released.compose(src, texts), paper.compose(src, texts))
    with pytest.raises(CirlabError, match="film_channels"):
        _model("film_san", options={"mask": "paper"})


@pytest.mark.parametrize("name", ["composeae", "realspace_concat_ae", "film_san"])
def test_released_weights_load_through_the_reference_names(name: str) -> None:
    """A state_dict in the released code's names (encoders left out) loads into a fresh model and gives the
    same numbers; an entry the release does not have, or a missing one, is refused."""
    torch.manual_seed(0)
    source = _model(name).eval()
    released = {ref: source.state_dict()[ours] for ours, ref in source.reference_names().items()}
    if name != "film_san":  # the release's 4-vector a = (w_conv, w_lin, unused, unused)
        w = source.branch_weights.detach()
        released["a"] = torch.stack([w[1], w[0], torch.tensor(1.0), torch.tensor(1.0)])
    torch.manual_seed(1)
    target = _model(name).eval()
    target.image_encoder.load_state_dict(source.image_encoder.state_dict())
    target.text_encoder.load_state_dict(source.text_encoder.state_dict())
    target.load_reference_state_dict({**released, "img_model.fc.0.weight": torch.zeros(1)})
    src, texts, tgt = _batch(3)
    torch.testing.assert_close(target.compose(src, texts), source.compose(src, texts), rtol=0, atol=0)
    with pytest.raises(CirlabError, match="released entries without a place"):
        target.load_reference_state_dict({**released, "extra.weight": torch.zeros(1)})
    with pytest.raises(CirlabError, match="missing"):
        target.load_reference_state_dict({k: v for k, v in released.items() if not k.startswith("decoder.")})


def test_composeae_branches_have_their_own_complex_projections() -> None:
    """As released: encoderLinear.0 and encoderWithConv.0 are two ComplexProjectionModules."""
    model = _model("composeae")
    assert model.projection_lin is not model.projection_conv
    names = model.reference_names()
    assert names["projection_lin.eta.1.weight"] == "encoderLinear.0.image_features.1.weight"
    assert names["projection_conv.gamma.3.weight"] == "encoderWithConv.0.bert_features.3.weight"


def test_crn_retrieval_feature_is_two_normalised_halves_and_branches_have_own_encoders() -> None:
    torch.manual_seed(0)
    model = _model("crn").eval()
    src, texts, tgt = _batch(3)
    for out in (model.compose(src, texts), model.embed_target(tgt)):
        torch.testing.assert_close(out[:, :16].norm(dim=1), torch.ones(3))
        torch.testing.assert_close(out[:, 16:].norm(dim=1), torch.ones(3))
    assert model.image_encoder is not model.image_encoder_global
    shared = _model("crn", options={"shared_encoders": True})
    assert len(shared.image_encoders()) == 1
    assert sum(p.numel() for p in shared.parameters()) < sum(p.numel() for p in model.parameters())


def test_crn_freezing_reaches_both_branch_encoders() -> None:
    model = _model("crn", freeze_image=True, freeze_text=True)
    assert not any(p.requires_grad for enc in model.image_encoders() + model.text_encoders() for p in enc.parameters())
    model.train()
    assert not model.image_encoder_global.training and model.networks.training


def test_crn_widths_are_the_releases_at_embed_dim_2048_and_follow_a_width_map() -> None:
    from cirlab.models.crn import CRNWidths

    release = CRNWidths()
    assert (release.dim, release.map, release.local_paths, release.global_paths) == (
        1024, 2048, (640, 512, 512, 384), (384, 256, 256, 128))
    assert CRNWidths.for_dim(1024) == release
    halved = release.remapped({w: w // 2 for w in (1024, 2048, 640, 512, 384, 256, 224, 128)})
    assert (halved.map, halved.local_paths, halved.middle) == (1024, (320, 256, 256, 192), 112)
    model = _model("crn", embed_dim=64, options={"width_map": {"1024": 32, "2048": 64, "640": 20, "512": 16,
                                                               "384": 12, "256": 8, "224": 7, "128": 4}})
    assert model.networks["local"].fuse.inception_gamma.branch2[1].conv.out_channels == 7
    with pytest.raises(CirlabError, match="add up"):
        _model("crn", embed_dim=64, options={"width_map": {"1024": 32, "2048": 64}})
    with pytest.raises(CirlabError, match="embed_dim must be 2 x width_map"):
        _model("crn", options={"width_map": {"1024": 32, "2048": 64, "640": 20, "512": 16, "384": 12, "256": 8,
                                             "224": 7, "128": 4}})
    with pytest.raises(CirlabError, match="unknown model option 'temperature_local'; known: .*local_t"):
        _model("crn", options={"temperature_local": 7.0})


def test_crn_classification_scales_the_cosine_once_and_weights_name_both_networks() -> None:
    """class = cross-entropy of loss_weight x cosine (10 at init, not 100); `class` weighs both networks."""
    torch.manual_seed(0)
    model = _model("crn")
    terms = _terms(model, _batch(4))
    assert set(terms) == {"local.class", "local.perceptual", "local.img", "local.mul_kl", "global.class",
                          "global.img", "global.mul_kl"}
    src, texts, tgt = _batch(4)
    q = model.query("global", model.encode_image(src), model.encode_text(texts))[1]
    t = model.target("global", model.encode_image(tgt))[1]
    cos = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(t, dim=-1).t()
    torch.testing.assert_close(terms["global.class"], torch.nn.functional.cross_entropy(10 * cos, torch.arange(4)))
    weighted = _model("crn", options={"loss_weights": {"class": 2.0, "local.img": 0.5}})
    expected = sum(terms.values()) + terms["local.class"] + terms["global.class"] - 0.5 * terms["local.img"]
    torch.testing.assert_close(weighted.total_loss(terms), expected)


def test_crn_paper_variants_are_options() -> None:
    """The release's defaults (no word mask, aggregation discarded, cross relation unused, pooled 1 x 1 map);
    each option changes the numbers or the terms."""
    torch.manual_seed(0)
    released = _model("crn").eval()
    src, texts, tgt = _batch(3)
    base = released.compose(src, ["x", "add a large red circle to the top-left", "remove"])
    assert released.encode_image(src)["local.map"].shape[2:] == (1, 1)
    for options in ({"word_mask": True}, {"aggregation": "map"}, {"image_map": "spatial"}):
        variant = _model("crn", options=options).eval()
        variant.load_state_dict(released.state_dict())
        assert not torch.allclose(variant.compose(src, ["x", "add a large red circle to the top-left", "remove"]),
                                  base), options
    terms = _terms(_model("crn", options={"relation_loss": True}), (src, texts, tgt))
    assert {"local.correct", "global.correct"} <= set(terms)
    with pytest.raises(CirlabError, match="aggregation must be one of"):
        _model("crn", options={"aggregation": "used"})


def test_crn_loads_a_released_state_dict_through_the_reference_names() -> None:
    """The released pair's entries (local_model.*, global_model.*; text_model = crn_lstm) load into a fresh
    model and give the same numbers; the Swin's entries are skipped, a foreign or a missing entry refused."""
    options = {"text_encoder": "crn_lstm", "text_options": {"word_dim": 8, "hidden_dim": 16}}
    torch.manual_seed(0)
    source = _model("crn", **options).eval()
    names = source.reference_names()
    assert names["networks.global.fuse.inception_beta.branch3.1.bn.running_var"] == \
        "global_model.global_fuse.inception_beta.branch3.1.bn.running_var"
    assert names["text_encoder_global.lstm.weight_hh_l0"] == "global_model.text_model.lstm.weight_hh_l0"
    released = {ref: source.state_dict()[ours] for ours, ref in names.items()}
    torch.manual_seed(1)
    target = _model("crn", **options).eval()
    for encoder in ("image_encoder", "image_encoder_global"):
        getattr(target, encoder).load_state_dict(getattr(source, encoder).state_dict())
    target.load_reference_state_dict({**released, "local_model.img_model.img_model.head.weight": torch.zeros(1)})
    src, texts, tgt = _batch(3)
    torch.testing.assert_close(target.compose(src, texts), source.compose(src, texts), rtol=0, atol=0)
    torch.testing.assert_close(target.embed_target(tgt), source.embed_target(tgt), rtol=0, atol=0)
    with pytest.raises(CirlabError, match="without a place"):
        target.load_reference_state_dict({**released, "local_model.extra.weight": torch.zeros(1)})
    with pytest.raises(CirlabError, match="missing"):
        target.load_reference_state_dict({k: v for k, v in released.items() if k != "global_model.loss_weight"})


def test_combiner_output_is_normalised_and_scale_fixed() -> None:
    model = _model("combiner").eval()
    src, texts, _ = _batch(3)
    torch.testing.assert_close(model.compose(src, texts).norm(dim=1), torch.ones(3))
    assert model.norm_scale.item() == 100.0 and not model.norm_scale.requires_grad


def test_combiner_training_logits_are_100_cosines_scaled_once() -> None:
    """CLIP4Cir: logits = 100 * q . normalize(t), so the batch loss equals cross-entropy of 100 x cosine
    (the scale applied to query AND target would give 10^4 x cosine)."""
    torch.manual_seed(0)
    model = _model("combiner").eval()
    src, texts, tgt = _batch(4)
    s, w, t = model.encode_image(src), model.encode_text(texts), model.encode_image(tgt)
    cos = model.compose_features(s, w) @ torch.nn.functional.normalize(t, dim=-1).t()
    expected = torch.nn.functional.cross_entropy(100.0 * cos, torch.arange(4))
    torch.testing.assert_close(_terms(model, (src, texts, tgt))["base"], expected)
    d2 = (model.normalize(model.compose_features(s, w))[:, None] - model.normalize(t)[None]).pow(2).sum(-1)
    torch.testing.assert_close(d2, 100.0 * (2.0 - 2.0 * cos))


def test_combiner_loads_a_released_state_dict_and_rejects_a_wrong_one() -> None:
    from cirlab.models.combiner import REFERENCE_NAMES

    model = _model("combiner", options={"proj_dim": 8, "hidden_dim": 12})
    released = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k in REFERENCE_NAMES}
    model.load_reference_state_dict(released)
    torch.testing.assert_close(model.dynamic_scalar[3].weight, released["dynamic_scalar.3.weight"])
    with pytest.raises(CirlabError, match="missing"):
        model.load_reference_state_dict({k: v for k, v in released.items() if k != "output_layer.bias"})
    with pytest.raises(CirlabError, match="hidden_dim"):
        model.load_reference_state_dict({**released, "output_layer.weight": torch.zeros(32, 5)})


def test_loss_weights_are_overridable() -> None:
    model = _model("composeae", options={"loss_weights": {"symmetry": 0.5}})
    assert model.loss_weights["symmetry"] == 0.5 and model.loss_weights["rec_img"] == 0.1


@pytest.mark.parametrize("name", ZOO)
def test_model_folder_round_trip(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config(name, options=ZOO_OPTIONS[name]), texts=TEXTS).eval()
    model.save_pretrained(tmp_path)
    loaded = CompositionModel.from_pretrained(tmp_path)
    src, texts, tgt = _batch(3)
    torch.testing.assert_close(loaded.compose(src, texts), model.compose(src, texts), rtol=0, atol=0)
    torch.testing.assert_close(loaded.embed_target(tgt), model.embed_target(tgt), rtol=0, atol=0)
