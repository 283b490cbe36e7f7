"""Parity runners: CRN (`crn_*`), yan9qu/crn `model.py`, `blocks.py`, `text_model.py` + the loss sums of `train.py`.

Every runner builds the cirlab module the fixture names from `cirlab.models.crn` at the fixture's widths (the
release's widths, `CRNWidths()`, put through the fixture's `width_remap` table where it has one, exactly as
`--model-option width_map=...` does), loads the released weights through the names next to the model (the
modules keep the release's layer names; `CRN.reference_names`), and runs the path training and evaluation use:
`CRN.query` / `CRN.target` (what `compose_features`, `target_features` and `training_losses` call) and
`CRN.losses_from` + `CRN.total_loss` (= `training_losses` on given features). The fixtures bypass the Swin: its
pooled vector is the image map (as a 1 x 1 map, what `encode_image` gives with the default `image_map=pooled`) and
its per-stage tokens (B, T, C) are the stage maps (B, C, T); the model is built on an image-encoder stand-in that
only states those widths. Text goes through the real `crn_lstm` encoder built from the fixture's vocabulary texts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cirlab.encoders import EncoderSpec, ImageEncoder, TextEncoder, resolve_text_encoder
from cirlab.losses import LOSSES
from cirlab.models._layers import load_reference_entries
from cirlab.models.base import MODELS, ModelConfig
from cirlab.models.crn import (
    CRN,
    CRNOptions,
    CRNWidths,
    CrossRelation,
    GeM,
    GlobalFuse,
    ImageHead,
    Inception,
    LocalFuse,
    stage_vector,
)
from tests.parity.harness import Fixture, cotangent_sum, grads_of, is_train, runner, set_train_mode

#: The width of Swin-L's pooled output in the release (`img1x1conv3` = Conv2d(1536, 2048)).
SWIN_L_WIDTH = 1536


class BypassedImageEncoder(ImageEncoder):
    """States the widths of the Swin the fixture bypassed (pooled vector, per-stage tokens); never runs."""

    def __init__(self, map_channels: int, stage_channels: list[int]) -> None:
        super().__init__()
        self.out_dim, self.map_channels, self.stage_channels = map_channels, map_channels, stage_channels

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the parity fixture bypasses the image encoder")


class BypassedTextEncoder(TextEncoder):
    def __init__(self, token_dim: int) -> None:
        super().__init__()
        self.out_dim = self.token_dim = token_dim

    def forward(self, texts: list[str]) -> torch.Tensor:
        raise AssertionError("the parity fixture bypasses the text encoder")


def _table(fixture: Fixture) -> dict[str, int]:
    return dict((fixture.meta.get("width_remap") or {}).get("table") or {})


def _widths(fixture: Fixture) -> CRNWidths:
    return CRNWidths().remapped({int(k): int(v) for k, v in _table(fixture).items()})


def _remap(fixture: Fixture, width: int) -> int:
    return int(_table(fixture).get(str(width), width))


def _load_exact(module: nn.Module, params: dict[str, torch.Tensor]) -> None:
    """A stand-alone released module whose layer names are ours: same keys, same number of values."""
    own = module.state_dict()
    assert set(own) == set(params), sorted(set(own) ^ set(params))
    module.load_state_dict({k: v.reshape(own[k].shape) for k, v in params.items()})


def _hooks(modules: dict[str, nn.Module], store: dict[str, torch.Tensor],
           pick: Callable[[object], torch.Tensor] = lambda out: out) -> None:  # type: ignore[assignment,return-value]
    for name, module in modules.items():
        module.register_forward_hook(lambda _m, _i, out, name=name: store.__setitem__(name, pick(out)))


def _buffers_after(module: nn.Module, prefix: str, names: dict[str, str] | None = None) -> dict[str, torch.Tensor]:
    buffers = dict(module.named_buffers())
    names = names if names is not None else {k: k for k in buffers}
    return {f"{prefix}{ref}": buffers[ours].clone() for ours, ref in names.items() if ours in buffers}


def _stages(fixture: Fixture, side: str, tokens: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The Swin's per-stage tokens (B, T, C) as stage maps (B, C, T), in stage order."""
    n = len([k for k in fixture.tensors if k.startswith(f"input.{side}early_stage.")])
    return [tokens[f"{side}early_stage.{i}"].transpose(1, 2) for i in range(n)]


@runner("crn_inception")
def run_inception(fixture: Fixture) -> dict[str, torch.Tensor]:
    x = fixture.input("x")
    dims = x.dim() - 2
    widths = _widths(fixture)
    paths = widths.local_paths if dims == 2 else widths.global_paths
    block = Inception(dims, int(fixture.meta["constructor"]["args"]["in_dim"]), paths, widths.reduce, widths.middle)
    _load_exact(block, fixture.prefixed("param."))
    produced: dict[str, torch.Tensor] = {}
    set_train_mode(block, False)
    with torch.no_grad():
        produced["output.eval.out"] = block(x)
    set_train_mode(block, True)
    hooked: dict[str, torch.Tensor] = {}
    _hooks({f"output.train.branch{i}": getattr(block, f"branch{i}") for i in range(4)}, hooked)
    out = block(x)
    cotangent_sum({"train.out": out}, fixture).backward()
    return {**produced, **hooked, "output.train.out": out, "grad.input.x": x.grad,
            **_buffers_after(block, "output.train.buffers_after."), **grads_of(dict(block.named_parameters()),
                                                                                "grad.param.")}


@runner("crn_gem")
def run_gem(fixture: Fixture) -> dict[str, torch.Tensor]:
    pool = GeM(p=float(fixture.meta["constructor"]["args"]["p"]), eps=float(fixture.meta["constructor"]["args"]["eps"]))
    _load_exact(pool, fixture.prefixed("param."))
    x4, x3 = fixture.input("x4"), fixture.input("x3")
    outputs = {"y4": pool(x4), "y3": pool(x3)}
    cotangent_sum(outputs, fixture).backward()
    return {"output.y4": outputs["y4"], "output.y3": outputs["y3"], "grad.input.x4": x4.grad,
            "grad.input.x3": x3.grad, **grads_of(dict(pool.named_parameters()), "grad.param.")}


@runner("crn_local_fuse", "crn_global_fuse")
def run_fuse(fixture: Fixture) -> dict[str, torch.Tensor]:
    cls = LocalFuse if fixture.name.startswith("crn_local") else GlobalFuse
    fuse = cls(_widths(fixture), float(fixture.meta["constructor"]["args"]["T"]))
    _load_exact(fuse, fixture.prefixed("param."))
    set_train_mode(fuse, is_train(fixture))
    hooked: dict[str, torch.Tensor] = {}
    _hooks({"output.hook.img1x1conv": fuse.img1x1conv, "output.hook.gamma": fuse.inception_gamma,
            "output.hook.beta": fuse.inception_beta}, hooked)
    image, text = fixture.input("img_tensor"), fixture.input("text_embed")
    out, attention = fuse(image, text)  # no word mask: the release's default
    attention_name = "atten" if "output.atten" in fixture.tensors else "attn"
    cotangent_sum({"out": out, attention_name: attention}, fixture).backward()
    produced = {"output.out": out, f"output.{attention_name}": attention, **hooked,
                "grad.input.img_tensor": image.grad, "grad.input.text_embed": text.grad,
                **grads_of(dict(fuse.named_parameters()), "grad.param.")}
    if is_train(fixture):
        produced.update(_buffers_after(fuse, "output.buffers_after."))
    return produced


@runner("crn_aggregation")
def run_aggregation(fixture: Fixture) -> dict[str, torch.Tensor]:
    inputs = {name: fixture.input(name) for name in fixture.input_names() if not name.startswith("cotangent")}
    stages = stage_vector(_stages(fixture, "", inputs), CRNOptions().aggregate_stages)
    head = ImageHead(inputs["pooled"].shape[1], _widths(fixture), stages.shape[1], aggregate=False)  # the default
    _load_exact(head, fixture.prefixed("param."))
    set_train_mode(head, is_train(fixture))
    hooked: dict[str, torch.Tensor] = {}
    _hooks({"output.hook.img_pool": head.img_pool}, hooked)
    imgs, feature = head(inputs["pooled"][:, :, None, None])
    final = head.aggregate(feature, stages)  # computed and discarded by the release; checked on its own
    outputs = {"imgs": imgs, "img_feature": feature, "hook.final_fc": final}
    cotangent_sum(outputs, fixture).backward()
    return {"output.imgs": imgs, "output.img_feature": feature, "output.low_level_feature": imgs,
            "output.hook.final_fc": final, **hooked, **grads_of(inputs, "grad.input."),
            **grads_of(dict(head.named_parameters()), "grad.param.")}


@runner("crn_relation")
def run_relation(fixture: Fixture) -> dict[str, torch.Tensor]:
    relation = CrossRelation(int(fixture.meta["constructor"]["args"]["embed_dim"]))
    _load_exact(relation, fixture.prefixed("param."))
    hooked: dict[str, torch.Tensor] = {}
    _hooks({"output.hook.x_before_": relation.fc1, "output.hook.x_after_": relation.fc2}, hooked)
    before, after = fixture.input("x_before"), fixture.input("x_after")
    x = relation(before, after)
    cotangent_sum({"x": x}, fixture).backward()
    return {"output.x": x, **hooked, "grad.input.x_before": before.grad, "grad.input.x_after": after.grad,
            **grads_of(dict(relation.named_parameters()), "grad.param.")}


def _crn(fixture: Fixture, image_encoder: ImageEncoder, text_encoder: TextEncoder, options: dict) -> CRN:
    """The `crn` model at the fixture's widths (`width_map` = the fixture's table)."""
    widths = _widths(fixture)
    config = ModelConfig(name="crn", embed_dim=2 * widths.dim, text_encoder="crn_lstm",
                         options={"width_map": _table(fixture), **options})
    model = MODELS.get("crn")(config, image_encoder, text_encoder)
    assert isinstance(model, CRN)
    return model


@runner("crn_compose_local", "crn_compose_global")
def run_compose(fixture: Fixture) -> dict[str, torch.Tensor]:
    kind = "local" if fixture.name.startswith("crn_compose_local") else "global"
    args, meta = fixture.meta["constructor"]["args"], fixture.meta
    inputs = {name: fixture.input(name) for name in fixture.input_names() if not name.startswith("cotangent")}
    spec = EncoderSpec(options={"word_dim": _remap(fixture, int(args["word_dim"])),
                                "hidden_dim": _remap(fixture, int(args["lstm_dim"]))})
    text_encoder = resolve_text_encoder("crn_lstm")(spec, texts=list(args["texts"]))
    query_stages = _stages(fixture, "query.", inputs)
    image_encoder = BypassedImageEncoder(inputs["query.pooled"].shape[1], [m.shape[1] for m in query_stages])
    model = _crn(fixture, image_encoder, text_encoder, {f"{kind}_t": float(args["T"])})
    own_text = model.text_encoder if kind == "local" else model.text_encoder_global
    assert dict(own_text.vocab.index) == meta["vocab_word2id"]
    ids, lengths = own_text.token_ids(list(meta["texts"]))
    assert torch.equal(ids, fixture.tensors["input.token_ids"])
    assert torch.equal(lengths, fixture.tensors["input.lengths"])
    params = fixture.prefixed("param.")
    model.load_reference_state_dict(params, kind=kind)
    set_train_mode(model, is_train(fixture))
    net = model.networks[kind]
    hooked: dict[str, torch.Tensor] = {}
    attention_name = "atten" if "output.hook.fuse.atten" in fixture.tensors else "attn"
    _hooks({"output.hook.fuse.out": net.fuse}, hooked, lambda out: out[0])  # type: ignore[index]
    _hooks({f"output.hook.fuse.{attention_name}": net.fuse}, hooked, lambda out: out[1])  # type: ignore[index]

    # what encode_image gives from the Swin: its pooled vector as a 1 x 1 map (option image_map=pooled)
    query_feats = {f"{kind}.map": inputs["query.pooled"][:, :, None, None]}
    target_feats = {f"{kind}.map": inputs["target.pooled"][:, :, None, None]}
    text_feats = model.encode_text(list(meta["texts"]))
    out, feature = model.query(kind, query_feats, text_feats)
    target_map, target_feature = model.target(kind, target_feats)
    with torch.no_grad():  # the release's discarded aggregation of each call, for its arithmetic
        finals = {side: net.img_model.aggregate(net.image(feats[f"{kind}.map"])[1],
                                                stage_vector(_stages(fixture, f"{side}.", inputs),
                                                             model.options.aggregate_stages))
                  for side, feats in (("query", query_feats), ("target", target_feats))}
    outputs = {f"{kind}_out": out, f"{kind}_feature": feature, "target.imgs": target_map,
               "target.img_feature": target_feature}
    cotangent_sum(outputs, fixture).backward()
    names = model.reference_names(kind)
    produced = {**{f"output.{k}": v for k, v in outputs.items()}, **hooked,
                "output.lstm_tensor": text_feats[f"{kind}.tokens"],
                **{f"output.hook.final_fc.{side}": v for side, v in finals.items()},
                **grads_of(inputs, "grad.input."),
                **{f"grad.param.{ref}": g for ref, g in model.reference_grads(kind).items()}}
    if is_train(fixture):
        produced.update(_buffers_after(model, "output.buffers_after.", names))
    return produced


@runner("crn_losses")
def run_losses(fixture: Fixture) -> dict[str, torch.Tensor]:
    inputs = {name: fixture.input(name) for name in fixture.input_names() if not name.startswith("cotangent")}
    args = fixture.meta["constructor"]["args"]
    model = _crn(fixture, BypassedImageEncoder(_remap(fixture, SWIN_L_WIDTH), []),
                 BypassedTextEncoder(inputs["lstm_local"].shape[2]),
                 {"local_t": float(args["T_local"]), "global_t": float(args["T_global"])})
    params = fixture.prefixed("param.")  # only the two temperatures enter these losses (omitted_state_dict)
    names = {ours: ref for ours, ref in model.reference_names().items() if ref in params}
    assert set(names.values()) == set(params), sorted(set(params) - set(names.values()))
    load_reference_entries(model, params, names, "released CRN")
    set_train_mode(model, is_train(fixture))
    # the bypass of the fixture: the features the two models' extractors would have returned
    reps = {"local.query": inputs["q_local_feat"], "local.target": inputs["t_local_feat"],
            "global.query": inputs["q_global_feat"], "global.target": inputs["t_global_feat"],
            "local.query_map": inputs["q_local_map"], "local.target_map": inputs["t_local_map"],
            "global.target_map": inputs["t_global_map"]}
    terms = model.losses_from(reps, LOSSES.get("batch_based_classification"))
    totals = {kind: model.total_loss({k: v for k, v in terms.items() if k.startswith(f"{kind}.")})
              for kind in ("local", "global")}
    scalar = model.total_loss(terms)
    scalar.backward()
    grads = model.reference_grads()
    return {**{f"output.{k}": v for k, v in terms.items()}, **{f"output.{k}.total": v for k, v in totals.items()},
            "output.scalar": scalar, **grads_of({k: v for k, v in inputs.items() if not k.startswith("lstm")},
                                                "grad.input."),
            **{f"grad.param.{ref}": grads[ref] for ref in params}}
