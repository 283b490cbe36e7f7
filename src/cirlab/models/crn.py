"""CRN: Cross Relation Network (Zhang et al., IEEE TIP 2023).

Equal to `model.py` + `blocks.py` + the loss assembly of `train.py` of yan9qu/crn at commit
e4b9d937deed3f38ef2be55a18bd89d5651b8ca2 (tested against fixtures produced by that code: tests/test_parity.py,
cases `crn_*`). The text model of the release is the `crn_lstm` text encoder.

Two networks, `local` and `global` (the release's `compose_local` / `compose_global`), each with its own image
and text encoder (copies of the configured ones; `shared_encoders=true` shares them). Widths by role
(`CRNWidths`, the release's in brackets): D [1024] = embed_dim / 2, M [2048] = 2D, the Inception paths scaled
alike (`width_map` sets every width explicitly). Per network:

- image (`img_backbone` after the Swin): the encoder's last map average-pooled to 1 x 1 (the release builds the
  Swin with num_classes=0, so its "map" is the pooled vector) -> conv1x1 (-> M, no bias) = the image map;
  GeM (learnable p, init 3) -> Linear(M, D) = the image feature (a target's half of the retrieval vector);
- text: the token features of every step (the release's LSTM outputs), padding included, no mask;
- local query (`local_conv`, T = 7): e = conv1x1(map) (-> D, no bias); per position, a softmax over the WORDS of
  `word . e / T` weights the words into a sentence vector; x = [e, sentence] (image first); gamma, beta =
  Inception2d(x) (paths 640 | 512 | 512 | 384 = M, every conv bias-free + BN + ReLU, so gamma, beta >= 0);
  out = gamma * map + beta; query = Linear(M, D)(GeM(out));
- global query (`global_conv`, T = 4): per word, a softmax over the POSITIONS attends the image into v (B, D, L);
  x = [word, v] (text first); gamma, beta = Inception1d(x) over the words (384 | 256 | 256 | 128 = D);
  out = gamma * v + beta; query = Linear(D, D)(GeM over every word, padding included).
The retrieval vector is [normalize(local), normalize(global)] for queries and targets (the release's test.py).

Training (`training_losses`) = the two released `compute_loss`es summed as train.py sums them. Per network:
`class` = the base loss on (loss_weight * normalize(q), normalize(t)), which with `--loss
batch_based_classification` is the release's cross-entropy of loss_weight x cosine (loss_weight: the network's
own learnable temperature, init 10, applied once); `img` = MSE(t_own, t_other) + MSE(q_own, q_other) on the
un-normalised features; `mul_kl` = KL(p_other || p_own) between the rows of softmax(10 cos(q, t)) (the literal
10, batch mean); the local network adds `perceptual` = MSE(query map `out`, target image map). The other
network's features are detached in each network's terms, so each network gets the gradient of its own loss, as
with the release's two optimisers. Loss weights `class`, `img`, `mul_kl`, `perceptual` (train.py's flags) weigh
both networks' terms of that name; `local.class` etc. weigh one network's.

Options (`--model-option`), the release's behaviour by default:
- `local_t` = 7, `global_t` = 4: the attention temperatures (train.py's --local_t / --global_t);
- `image_map` = `pooled` (release) | `spatial`: the encoder's last map as it is (the paper's 7 x 7 attention);
- `aggregation` = `discarded` (release) | `map`: the release computes the hierarchical aggregation
  `final = final_fc([image feature, mean(stage a), mean(stage b)])` and `imgs + final`, then discards both
  (it returns `imgs`), so by default it is not computed; `map` uses `imgs + final` as the image map (query and
  perceptual loss; our reading of the paper). `aggregate_stages` = [1, 2]: the encoder stages averaged (the
  release's Swin `early_stage[1]`, `[2]`). `final_fc` is built whenever the encoder has those stages, as released;
- `word_mask` = false (release) | true: padded words leave the local softmax and the global GeM (the global
  Inception1d still convolves over them, so a query's vector can still depend on its batch's padding);
- `relation_loss` = false (release: the cross relation FusDiff(q, t) is computed and reaches no loss, so it is
  not computed) | true: adds `correct` = the base loss between FusDiff(q, t) and the max over words of the
  tokens, the release's commented-out `loss['correct']` (`relation` = the release's `correct_module`);
- `shared_encoders` = false (release);
- `width_map` = {release width: width} for every width the release hard-codes (1024, 2048, 640, 512, 384, 256,
  224, 128; the parity fixtures' table); by default all are scaled by D / 1024;
- `dropout`: accepted for train.py's --dropout_rate; the release builds Dropout layers and never applies them,
  so it changes nothing here either.

Deviations from the release (none changes a number of one forward pass and its gradients; see the parity tests):
- one optimiser step on the sum of both networks' totals; the release steps the local network first, then the
  global one, whose terms use local features recomputed by the updated local network;
- forwards whose results the release throws away are skipped: the composition of an all-zero "mask" image in
  each compute_loss, the other network's features that train.py recomputes for each step, the aggregation, the
  cross relation, the max-pooled text. Their only lasting effect in the release is on BatchNorm running statistics
  (each Inception BatchNorm sees three batches per step there, one of them a blank image; one batch here), so
  evaluation-time statistics differ;
- BatchNorm on a single value per channel (a batch of one with 1 x 1 maps) uses the running statistics instead
  of failing; GeM's special cases p == 1 and p == inf (never reached by a learned p) are not kept;
- the two networks' encoders start as copies (identical initialisation); the release draws its two LSTMs
  independently (its two Swin-Ls are the same pretrained weights);
- a text encoder whose token width is not D gets a Linear(-> D) (`text_proj`; the release's LSTM width is D);
- the trainer's precision instead of float16 autocast; any cirlab image encoder instead of timm's Swin-L.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.encoders.text.crn_lstm import CRNLSTMTextEncoder
from cirlab.models._layers import (
    gem,
    grads_by_reference_name,
    identity_or_linear,
    load_reference_entries,
    map_reference_names,
)
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig, ModelOptions
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

NETWORKS = ("local", "global")
#: The mutual-learning logit scale, a literal 10 in the release (not the learnable loss_weight).
KL_SCALE = 10.0
Feats = dict[str, torch.Tensor]


# widths and options ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CRNWidths:
    """Every width yan9qu/crn hard-codes, by role (defaults: the release's)."""

    dim: int = 1024  #: D: features, LSTM width, the fuse modules' conv1x1 output
    map: int = 2048  #: M: img1x1conv3 output, the map the local network modulates (= Inception2d output)
    local_paths: tuple[int, int, int, int] = (640, 512, 512, 384)  #: Inception2d path outputs (sum M)
    global_paths: tuple[int, int, int, int] = (384, 256, 256, 128)  #: Inception1d path outputs (sum D)
    reduce: int = 512  #: the 1x1 reduction before the 3x3s of paths 1 and 2
    middle: int = 224  #: path 2's middle 3x3

    def __post_init__(self) -> None:
        values = [self.dim, self.map, *self.local_paths, *self.global_paths, self.reduce, self.middle]
        if min(values) < 1:
            raise CirlabError(f"crn widths must be positive, got {self}")
        if sum(self.local_paths) != self.map or sum(self.global_paths) != self.dim:
            raise CirlabError(f"crn widths: the Inception2d paths {self.local_paths} must add up to the map width "
                              f"{self.map} and the Inception1d paths {self.global_paths} to the feature width "
                              f"{self.dim} (check width_map)")

    def remapped(self, table: Mapping[int, int]) -> CRNWidths:
        """Every width w replaced by table[w] where the table has it (the fixtures' `width_remap`)."""
        def m(w: int) -> int:
            return int(table.get(w, w))

        return CRNWidths(m(self.dim), m(self.map), tuple(m(w) for w in self.local_paths),  # type: ignore[arg-type]
                         tuple(m(w) for w in self.global_paths), m(self.reduce), m(self.middle))  # type: ignore[arg-type]

    @classmethod
    def for_dim(cls, dim: int) -> CRNWidths:
        """The release's widths scaled by dim / 1024 (the first path of each Inception absorbs the rounding)."""
        release = cls()

        def s(w: int) -> int:
            return max(1, round(w * dim / release.dim))

        def paths(ws: tuple[int, ...], total: int) -> tuple[int, int, int, int]:
            rest = [s(w) for w in ws[1:]]
            return (total - sum(rest), *rest)  # type: ignore[return-value]

        return cls(dim, 2 * dim, paths(release.local_paths, 2 * dim), paths(release.global_paths, dim),
                   s(release.reduce), s(release.middle))


@dataclass
class CRNOptions(ModelOptions):
    """`--model-option`s of `crn` (see the module docstring), the release's behaviour by default."""

    local_t: float = option(7.0, "temperature of the local attention (train.py --local_t)")
    global_t: float = option(4.0, "temperature of the global attention (train.py --global_t)")
    image_map: Literal["pooled", "spatial"] = option("pooled", "pooled: the last map averaged to 1 x 1 (the "
                                                               "release); spatial: the map as it is (the paper)")
    aggregation: Literal["discarded", "map"] = option("discarded", "discarded: the hierarchical aggregation is not "
                                                                   "used (the release); map: imgs + final is the "
                                                                   "image map")
    aggregate_stages: list[int] = option([1, 2], "encoder stages the aggregation averages")
    word_mask: bool = option(False, "padded words leave the local softmax and the global GeM (the release: false)")
    relation_loss: bool = option(False, "add the cross-relation loss 'correct' (the release computes it for no "
                                        "loss)")
    shared_encoders: bool = option(False, "one image and one text encoder for both networks (the release: two)")
    width_map: dict[str, int] = option({}, "{release width: width} for every width the release hard-codes; "
                                           "default: all scaled by embed_dim / 2048")
    dropout: float = option(0.0, "train.py --dropout_rate; the release never applies its Dropout layers, so it "
                                 "changes nothing")

    def widths(self, embed_dim: int) -> CRNWidths:
        if not self.width_map:
            if embed_dim % 2 or embed_dim < 4:
                raise CirlabError(f"crn: embed_dim must be even and >= 4 (two networks of embed_dim / 2), "
                                  f"got {embed_dim}")
            return CRNWidths.for_dim(embed_dim // 2)
        try:
            table = {int(k): int(v) for k, v in self.width_map.items()}
        except ValueError:
            raise CirlabError(f"crn model option width_map: keys must be the release's widths, got "
                              f"{sorted(self.width_map)}") from None
        widths = CRNWidths().remapped(table)
        if 2 * widths.dim != embed_dim:
            raise CirlabError(f"crn: embed_dim must be 2 x width_map[1024] = {2 * widths.dim}, got {embed_dim}")
        return widths


# building blocks (blocks.py) ------------------------------------------------------------------------------------
class BasicConv(nn.Module):
    """The release's BasicConv1d / BasicConv2d: conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, dims: int, dim_in: int, dim_out: int, kernel: int, padding: int = 0) -> None:
        super().__init__()
        self.conv = (nn.Conv2d if dims == 2 else nn.Conv1d)(dim_in, dim_out, kernel, padding=padding, bias=False)
        self.bn = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.training and x.numel() == x.shape[1]:  # one value per channel: no batch statistics exist
            bn = self.bn
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        else:
            x = self.bn(x)
        return F.relu(x)


class Inception(nn.Module):
    """The release's Inception1d / Inception2d: four paths concatenated on the channels,
    1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 | avg-pool 3 (stride 1, valid neighbours only) -> 1x1."""

    def __init__(self, dims: int, dim_in: int, paths: tuple[int, int, int, int], reduce: int, middle: int) -> None:
        super().__init__()
        pool = nn.AvgPool2d if dims == 2 else nn.AvgPool1d
        self.branch0 = BasicConv(dims, dim_in, paths[0], 1)
        self.branch1 = nn.Sequential(BasicConv(dims, dim_in, reduce, 1), BasicConv(dims, reduce, paths[1], 3, 1))
        self.branch2 = nn.Sequential(BasicConv(dims, dim_in, reduce, 1), BasicConv(dims, reduce, middle, 3, 1),
                                     BasicConv(dims, middle, paths[2], 3, 1))
        self.branch3 = nn.Sequential(pool(3, stride=1, padding=1, count_include_pad=False),
                                     BasicConv(dims, dim_in, paths[3], 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)], dim=1)


class GeM(nn.Module):
    """The release's GeM: (mean of x.clamp(min=1e-6) ** p) ** (1 / p) over every axis after the channels, with
    p a learnable (1,) tensor (init 3, unbounded). `mask` (option word_mask) leaves positions out."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return gem(x, self.p, tuple(range(2, x.dim())), mask, self.eps)


class CrossRelation(nn.Module):
    """The release's FusDiff: b' = ReLU(fc1([b * a, b])), a' = ReLU(fc2([b * a, a])),
    out = ReLU(fc([b, a' - b', a])), with b = x_before, a = x_after."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.fc2 = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU())
        self.fc = nn.Sequential(nn.Linear(3 * dim, dim), nn.ReLU())

    def forward(self, x_before: torch.Tensor, x_after: torch.Tensor) -> torch.Tensor:
        both = x_before * x_after
        before = self.fc1(torch.cat([both, x_before], dim=-1))
        after = self.fc2(torch.cat([both, x_after], dim=-1))
        return self.fc(torch.cat([x_before, after - before, x_after], dim=-1))


# model.py's modules -----------------------------------------------------------------------------------------------
class ImageHead(nn.Module):
    """The release's `img_backbone` after the Swin: image map = conv1x1(map) (-> M, no bias), image feature =
    Linear(M, D)(GeM(image map)); `final_fc` is the hierarchical aggregation (see option `aggregation`)."""

    def __init__(self, dim_in: int, widths: CRNWidths, stage_width: int | None, aggregate: bool) -> None:
        super().__init__()
        self.img1x1conv3 = nn.Conv2d(dim_in, widths.map, 1, bias=False)
        self.img_pool = GeM()
        self.img_fc = nn.Linear(widths.map, widths.dim)
        self.final_fc = nn.Linear(widths.dim + stage_width, widths.map) if stage_width else None
        self.aggregate_into_map = aggregate

    def aggregate(self, feature: torch.Tensor, stages: torch.Tensor) -> torch.Tensor:
        """final_fc([image feature, averaged stages]) (B, M): the release's `final`."""
        if self.final_fc is None:
            raise CirlabError("crn: the image encoder has none of the stages option aggregate_stages names")
        return self.final_fc(torch.cat([feature, stages], dim=1))

    def forward(self, image_map: torch.Tensor, stages: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = self.img1x1conv3(image_map)
        feature = self.img_fc(self.img_pool(imgs))
        if self.aggregate_into_map:
            imgs = imgs + self.aggregate(feature, stages)[..., None, None]
        return imgs, feature


class LocalFuse(nn.Module):
    """The release's `local_conv`: words weighted per position (softmax over words), Inception2d gamma / beta,
    out = gamma * map + beta. Returns (out, attention (B, L, positions))."""

    def __init__(self, widths: CRNWidths, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.img1x1conv = nn.Conv2d(widths.map, widths.dim, 1, bias=False)
        self.inception_gamma = Inception(2, 2 * widths.dim, widths.local_paths, widths.reduce, widths.middle)
        self.inception_beta = Inception(2, 2 * widths.dim, widths.local_paths, widths.reduce, widths.middle)

    def forward(self, image_map: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        embed = self.img1x1conv(image_map)
        b, d, h, w = embed.shape
        embed = embed.flatten(2)  # (B, D, hw)
        scores = words @ embed / self.temperature  # (B, L, hw)
        if mask is not None:
            scores = scores.masked_fill(~mask[:, :, None], float("-inf"))
        attention = torch.softmax(scores, dim=1)  # over the words
        sentence = words.transpose(1, 2) @ attention  # (B, D, hw)
        x = torch.cat([embed, sentence], dim=1).view(b, 2 * d, h, w)  # image first
        return self.inception_gamma(x) * image_map + self.inception_beta(x), attention


class GlobalFuse(nn.Module):
    """The release's `global_conv`: the image attended per word (softmax over positions) into v (B, D, L),
    Inception1d gamma / beta over the words, out = gamma * v + beta. Returns (out, attention (B, L, positions))."""

    def __init__(self, widths: CRNWidths, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.img1x1conv = nn.Conv2d(widths.map, widths.dim, 1, bias=False)
        self.inception_gamma = Inception(1, 2 * widths.dim, widths.global_paths, widths.reduce, widths.middle)
        self.inception_beta = Inception(1, 2 * widths.dim, widths.global_paths, widths.reduce, widths.middle)

    def forward(self, image_map: torch.Tensor, words: torch.Tensor, mask: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        embed = self.img1x1conv(image_map).flatten(2)  # (B, D, hw)
        attention = torch.softmax(words @ embed / self.temperature, dim=-1)  # (B, L, hw), over the positions
        attended = embed @ attention.transpose(1, 2)  # (B, D, L)
        x = torch.cat([words.transpose(1, 2), attended], dim=1)  # text first
        return self.inception_gamma(x) * attended + self.inception_beta(x), attention


class CRNNetwork(nn.Module):
    """One of the release's two models (`compose_local` / `compose_global`) without its Swin and its LSTM."""

    def __init__(self, kind: str, widths: CRNWidths, image_channels: int, stage_width: int | None,
                 token_dim: int, temperature: float, aggregate: bool, word_mask: bool) -> None:
        super().__init__()
        self.kind, self.word_mask = kind, word_mask
        self.loss_weight = nn.Parameter(torch.tensor([10.0]))  # the classification temperature
        self.text_proj = identity_or_linear(token_dim, widths.dim)
        self.img_model = ImageHead(image_channels, widths, stage_width, aggregate)
        self.fuse: nn.Module = LocalFuse(widths, temperature) if kind == "local" else GlobalFuse(widths, temperature)
        self.pool = GeM()
        self.fc = nn.Linear(widths.map if kind == "local" else widths.dim, widths.dim)
        self.relation = CrossRelation(widths.dim)

    def reference_prefixes(self) -> dict[str, str]:
        """{our sub-module: the release's}; below them the layers keep the release's names."""
        return {"img_model": "img_model", "fuse": f"{self.kind}_fuse", "pool": f"{self.kind}_pool",
                "fc": f"{self.kind}_fc", "relation": "correct_module", "loss_weight": "loss_weight"}

    def words(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token features cut to the batch's longest text (the release pads to it; features padded wider, as in
        the feature cache, come back to the same width), and the word mask if option word_mask is on."""
        keep = int(mask.sum(1).max())
        return self.text_proj(tokens[:, :keep]), (mask[:, :keep] if self.word_mask else None)

    def image(self, image_map: torch.Tensor, stages: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """(image map, image feature): the release's `extract_img_feature`."""
        return self.img_model(image_map, stages)

    def compose(self, image_map: torch.Tensor, stages: torch.Tensor | None, tokens: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fuse output, query feature): the release's `compose_img_text`."""
        words, word_mask = self.words(tokens, mask)
        imgs, _ = self.image(image_map, stages)
        out, _ = self.fuse(imgs, words, word_mask)
        pool_mask = word_mask[:, None, :] if word_mask is not None and self.kind == "global" else None
        return out, self.fc(self.pool(out, pool_mask))


def mutual_kl(query: torch.Tensor, target: torch.Tensor, query_other: torch.Tensor, target_other: torch.Tensor
              ) -> torch.Tensor:
    """KL(p_other || p_own), batch mean, with p = row softmax of 10 cos(q, t); the other side is detached."""
    own = KL_SCALE * F.normalize(query, dim=-1) @ F.normalize(target, dim=-1).t()
    other = KL_SCALE * F.normalize(query_other, dim=-1) @ F.normalize(target_other, dim=-1).t()
    return F.kl_div(F.log_softmax(own, dim=1), F.softmax(other.detach(), dim=1), reduction="batchmean")


def stage_vector(maps: list[torch.Tensor], indices: list[int]) -> torch.Tensor:
    """The named stages' maps (B, C, ...) averaged over their positions and concatenated (B, sum C)."""
    return torch.cat([maps[i].flatten(2).mean(2) for i in indices], dim=1)


@MODELS.register("crn")
class CRN(CompositionModel):
    """Local + global networks trained together; retrieval vector [normalize(local), normalize(global)]."""

    Options = CRNOptions
    options: CRNOptions
    default_loss_weights = {"class": 1.0, "perceptual": 1.0, "img": 1.0, "mul_kl": 1.0, "correct": 1.0}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        opts = self.options
        widths = opts.widths(config.embed_dim)
        self.norm_scale.requires_grad_(False)  # unused: each network has its own temperature (loss_weight)
        if not opts.shared_encoders:
            self.image_encoder_global = copy.deepcopy(image_encoder)
            self.text_encoder_global = copy.deepcopy(text_encoder)
        token_dim = int(text_encoder.token_dim)
        if not token_dim:
            raise CirlabError(f"crn needs a text encoder with token features; {config.text_encoder!r} has none")
        stage_width = self._stage_width(image_encoder)
        temperatures = {"local": opts.local_t, "global": opts.global_t}
        self.networks = nn.ModuleDict({
            kind: CRNNetwork(kind, widths, int(image_encoder.map_channels), stage_width, token_dim,
                             temperatures[kind], opts.aggregation == "map", opts.word_mask)
            for kind in NETWORKS})

    def _stage_width(self, image_encoder: ImageEncoder) -> int | None:
        """Width of the averaged stages final_fc reads (None: the encoder has not got them)."""
        channels = list(getattr(image_encoder, "stage_channels", [image_encoder.map_channels]))
        indices = self.options.aggregate_stages
        if indices and all(-len(channels) <= i < len(channels) for i in indices):
            return sum(channels[i] for i in indices)
        if self.options.aggregation == "map":
            raise CirlabError(f"crn model option aggregate_stages {indices}: the image encoder has "
                              f"{len(channels)} stages")
        return None

    def image_encoders(self) -> list[nn.Module]:
        return [self.image_encoder] if self.options.shared_encoders else [self.image_encoder,
                                                                         self.image_encoder_global]

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder] if self.options.shared_encoders else [self.text_encoder, self.text_encoder_global]

    # features ---------------------------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> Feats:
        out: Feats = {}
        aggregate = self.options.aggregation == "map"
        for kind, encoder in zip(NETWORKS, self.image_encoders() * (2 if self.options.shared_encoders else 1),
                                 strict=True):
            if self.options.shared_encoders and kind == "global":
                out.update({k.replace("local.", "global.", 1): v for k, v in out.items()})
                continue
            maps = encoder.stage_maps(images) if aggregate else [encoder.forward_map(images)]
            last = maps[-1]
            out[f"{kind}.map"] = last.mean(dim=(2, 3), keepdim=True) if self.options.image_map == "pooled" else last
            if aggregate:
                out[f"{kind}.stages"] = stage_vector(maps, self.options.aggregate_stages)
        return out

    def encode_text(self, texts: list[str]) -> Feats:
        out: Feats = {}
        for kind, encoder in zip(NETWORKS, self.text_encoders() * (2 if self.options.shared_encoders else 1),
                                 strict=True):
            if self.options.shared_encoders and kind == "global":
                out["global.tokens"], out["global.mask"] = out["local.tokens"], out["local.mask"]
                continue
            out[f"{kind}.tokens"], out[f"{kind}.mask"] = encoder.forward_tokens(texts)
        return out

    def query(self, kind: str, image_feats: Feats, text_feats: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        """(fuse output, query feature) of one network."""
        return self.networks[kind].compose(image_feats[f"{kind}.map"], image_feats.get(f"{kind}.stages"),
                                           text_feats[f"{kind}.tokens"], text_feats[f"{kind}.mask"])

    def target(self, kind: str, image_feats: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        """(image map, image feature) of one network."""
        return self.networks[kind].image(image_feats[f"{kind}.map"], image_feats.get(f"{kind}.stages"))

    def compose_features(self, image_feats: Feats, text_feats: Feats) -> torch.Tensor:
        return torch.cat([F.normalize(self.query(k, image_feats, text_feats)[1], dim=-1) for k in NETWORKS], dim=1)

    def target_features(self, image_feats: Feats) -> torch.Tensor:
        return torch.cat([F.normalize(self.target(k, image_feats)[1], dim=-1) for k in NETWORKS], dim=1)

    # training ---------------------------------------------------------------------------------------------------
    def representations(self, source: Feats, text: Feats, target: Feats) -> Feats:
        """What the losses read, per network: `<kind>.query_map` (fuse output), `.query`, `.target_map`,
        `.target`, and `.words` when option relation_loss is on."""
        reps: Feats = {}
        for kind in NETWORKS:
            reps[f"{kind}.query_map"], reps[f"{kind}.query"] = self.query(kind, source, text)
            reps[f"{kind}.target_map"], reps[f"{kind}.target"] = self.target(kind, target)
            if self.options.relation_loss:
                reps[f"{kind}.words"] = self.networks[kind].words(text[f"{kind}.tokens"], text[f"{kind}.mask"])[0]
        return reps

    def losses_from(self, reps: Feats, base_loss: BaseLoss) -> dict[str, torch.Tensor]:
        """Both networks' compute_loss terms, `<kind>.<term>`; the other network's features detached."""
        terms: dict[str, torch.Tensor] = {}
        for own, other in (("local", "global"), ("global", "local")):
            net = self.networks[own]
            q, t = reps[f"{own}.query"], reps[f"{own}.target"]
            q_other, t_other = reps[f"{other}.query"].detach(), reps[f"{other}.target"].detach()
            terms[f"{own}.class"] = base_loss(net.loss_weight * F.normalize(q, dim=-1), F.normalize(t, dim=-1))
            if own == "local":
                terms["local.perceptual"] = F.mse_loss(reps["local.query_map"], reps["local.target_map"])
            terms[f"{own}.img"] = F.mse_loss(t, t_other) + F.mse_loss(q, q_other)
            terms[f"{own}.mul_kl"] = mutual_kl(q, t, q_other, t_other)
            if self.options.relation_loss:
                words = reps[f"{own}.words"].max(dim=1).values
                terms[f"{own}.correct"] = base_loss(net.loss_weight * F.normalize(net.relation(q, t), dim=-1),
                                                    F.normalize(words, dim=-1))
        return terms

    def training_losses(self, source: Feats, text: Feats, target: Feats, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        return self.losses_from(self.representations(source, text, target), base_loss)

    def term_weight(self, name: str) -> float:
        """Weight of `<kind>.<term>`: loss_weights[`<kind>.<term>`], else loss_weights[`<term>`], else 1."""
        return float(self.loss_weights.get(name, self.loss_weights.get(name.split(".", 1)[-1], 1.0)))

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.term_weight(name) * value for name, value in terms.items())

    # the released weights ---------------------------------------------------------------------------------------
    def _released(self, kind: str | None) -> list[tuple[str, str]]:
        """(network, the release's name prefix of its model): the pair, or one network on its own."""
        return [(kind, "")] if kind else [(k, f"{k}_model.") for k in NETWORKS]

    def reference_names(self, kind: str | None = None) -> dict[str, str]:
        """{our state_dict name: the release's}. For the released pair (`local_model.*`, `global_model.*`), or
        with `kind`, for one released network (`compose_local` / `compose_global`). A `crn_lstm` text encoder
        maps to the release's `text_model` (the local one only where encoders are shared); the Swin
        (`img_model.img_model.*`) has no counterpart."""
        names: dict[str, str] = {}
        for k, top in self._released(kind):
            prefixes = {f"networks.{k}.{ours}": f"{top}{ref}"
                        for ours, ref in self.networks[k].reference_prefixes().items()}
            encoder = "text_encoder" if k == "local" else "text_encoder_global"
            if isinstance(getattr(self, encoder, None), CRNLSTMTextEncoder):
                prefixes[encoder] = f"{top}text_model"
            names.update(map_reference_names(self, prefixes))
        return names

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor], kind: str | None = None) -> None:
        """Load a released state_dict (the pair's, or with `kind` one network's). The Swin's entries are skipped,
        and `text_model.*` where no `crn_lstm` text encoder of ours takes them; every other released entry must
        have a place here, and every parameter of the networks a released entry."""
        names = self.reference_names(kind)
        mapped = set(names.values())
        skipped: list[str] = []
        for _, top in self._released(kind):
            skipped.append(f"{top}img_model.img_model.")
            if f"{top}text_model.embedding_layer.weight" not in mapped:
                skipped.append(f"{top}text_model.")
        unused = sorted(k for k in state_dict if k not in mapped and not k.startswith(tuple(skipped)))
        heads = tuple(f"networks.{k}." for k, _ in self._released(kind))
        ours = [n for n, _ in self.named_parameters() if n.startswith(heads) and n not in names]
        if unused or ours:
            raise CirlabError(f"crn: not the released model's state_dict (released entries without a place here: "
                              f"{unused[:5]}; ours without a released entry: {ours[:5]})")
        load_reference_entries(self, state_dict, names, "released CRN")

    def reference_grads(self, kind: str | None = None) -> dict[str, torch.Tensor]:
        """Our gradients under the release's names (zeros where none arrived, as the fixtures store them)."""
        return grads_by_reference_name(self, self.reference_names(kind))

