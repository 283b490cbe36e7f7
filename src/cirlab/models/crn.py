"""CRN: Cross Relation Network with hierarchical aggregation (Zhang et al., IEEE TIP 2023).

Two networks trained together by mutual learning, `local` (attention temperature 7) and `global` (4), each
with its own copy of the image backbone and of the text encoder (`shared_encoders=true` shares them, which
halves the cost on a CPU). Each branch has H = embed_dim / 2 dimensions; the retrieval feature is
`[normalize(local), normalize(global)]`. Sizes scale with H where the paper has 1024 (and 2H where it has
2048); the backbone is any multi-stage encoder (`stage_maps`), the text any encoder with token features.

- image branch (targets, and the base of the local query): last map -> conv1x1 (2H) -> GeM (p = 3, learnable)
  + hierarchical aggregation (average-pooled maps of every stage, concatenated -> Linear(-> 2H)) -> Linear(2H, H);
- local query: words attend to every position (softmax over words of `img . word / T`); the word-weighted
  sentence vector is concatenated with the position's feature; Inception-style 2-D blocks give gamma and beta
  (2H); `out = gamma * img2H + beta`; GeM + hierarchical vector -> Linear(2H, H);
- global query: every word attends over positions (softmax over positions); [attended image, word] ->
  Inception-style 1-D blocks over the words give gamma, beta (H); `out = gamma * v + beta`; GeM over the
  valid words -> Linear(H, H);
- cross relation (FusDiff) between the reference (a) and target (b) image vectors:
  `b' = ReLU(W1 [b*a, b])`, `a' = ReLU(W2 [b*a, a])`, `rel = ReLU(W [b, a' - b', a])`.

Losses (all weight 1): per branch `cls_<branch>` (the base loss on features scaled by a learnable
temperature initialised to 10; the paper's is `--loss batch_based_classification`), `relation_<branch>` (the
base loss between the cross relation of (reference, target) and the mean word feature of the modification
text, so the image pair's relation acts as an auxiliary text aligned with the modification), `img` (MSE
between the two branches' normalised query features and between their target features, the other branch
detached), `perceptual` (local: MSE between the modulated query map and the target's map) and `kl` (mutual
KL between the two branches' batch similarity distributions at temperature 10, each towards the other's
detached distribution, batch-mean).

Deviations from the released code (yan9qu/crn), following the paper: the hierarchical aggregation is added
to the image branch (the released code computes it and never uses it); the cross relation is wired into the
`relation` losses (the released code computes it and uses it in no loss; how the paper pairs it with the text
is our reading); both branches are built from copies of the same encoders (identical initialisation; the
paper's Swin-L is ImageNet-initialised in both, so this matches it for pretrained backbones). Not
reproduced: mixed precision and the Swin-L/1024-d sizes (set `--embed-dim` and the text options to get them).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import GeM, identity_or_linear
from cirlab.models.base import MODELS, BaseLoss, CompositionModel, ModelConfig
from cirlab.utils.errors import CirlabError

BRANCHES = ("local", "global")
Feats = dict[str, torch.Tensor]


class Inception(nn.Module):
    """Inception-style block (1-D or 2-D): 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | maxpool-1x1, concatenated."""

    def __init__(self, dim_in: int, dim_out: int, dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv1d
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool1d
        b = dim_out // 4
        first = dim_out - 3 * b
        self.paths = nn.ModuleList([
            conv(dim_in, first, 1),
            nn.Sequential(conv(dim_in, b, 1), nn.ReLU(), conv(b, b, 3, padding=1)),
            nn.Sequential(conv(dim_in, b, 1), nn.ReLU(), conv(b, b, 3, padding=1), nn.ReLU(), conv(b, b, 3, padding=1)),
            nn.Sequential(pool(3, stride=1, padding=1), conv(dim_in, b, 1)),
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([p(x) for p in self.paths], dim=1)


class CrossRelation(nn.Module):
    """FusDiff: b' = ReLU(W1 [b*a, b]), a' = ReLU(W2 [b*a, a]), out = ReLU(W [b, a' - b', a])."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1, self.w2, self.w = nn.Linear(2 * dim, dim), nn.Linear(2 * dim, dim), nn.Linear(3 * dim, dim)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ab = a * b
        b2 = F.relu(self.w1(torch.cat([ab, b], dim=1)))
        a2 = F.relu(self.w2(torch.cat([ab, a], dim=1)))
        return F.relu(self.w(torch.cat([b, a2 - b2, a], dim=1)))


class CRNBranch(nn.Module):
    """One of the two networks: image branch, its query composition (local or global) and cross relation."""

    def __init__(self, kind: str, stage_channels: list[int], word_dim: int, h: int, temperature: float) -> None:
        super().__init__()
        c = stage_channels[-1]
        self.kind, self.temperature = kind, temperature
        self.image_conv = nn.Conv2d(c, 2 * h, 1)
        self.hierarchy = nn.Linear(sum(stage_channels), 2 * h)
        self.gem = GeM(3.0)
        self.image_fc = nn.Linear(2 * h, h)
        self.words = identity_or_linear(word_dim, h)
        self.query_conv = nn.Conv2d(c, h, 1)
        if kind == "local":
            self.gamma, self.beta = Inception(2 * h, 2 * h, dims=2), Inception(2 * h, 2 * h, dims=2)
            self.query_fc = nn.Linear(2 * h, h)
        else:
            self.gamma, self.beta = Inception(2 * h, h, dims=1), Inception(2 * h, h, dims=1)
            self.query_fc = nn.Linear(h, h)
        self.relation = CrossRelation(h)

    def image_map(self, feats: Feats) -> torch.Tensor:
        return self.image_conv(feats[f"{self.kind}.map"])

    def image_vector(self, feats: Feats, image_map: torch.Tensor | None = None) -> torch.Tensor:
        m = self.image_map(feats) if image_map is None else image_map
        return self.image_fc(self.gem(m) + self.hierarchy(feats[f"{self.kind}.stages"]))

    def query(self, image: Feats, text: Feats) -> tuple[torch.Tensor, torch.Tensor]:
        """(query vector (B, H), modulated map or word features used by the perceptual loss)."""
        words = self.words(text[f"{self.kind}.tokens"])  # (B, L, H)
        mask = text[f"{self.kind}.mask"].bool()  # (B, L)
        fmap = self.query_conv(image[f"{self.kind}.map"])  # (B, H, h, w)
        b, h, y, x = fmap.shape
        pos = fmap.flatten(2).transpose(1, 2)  # (B, N, H)
        scores = pos @ words.transpose(1, 2) / self.temperature  # (B, N, L)
        if self.kind == "local":
            attn = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), dim=2)
            sentence = (attn @ words).transpose(1, 2).reshape(b, h, y, x)
            joint = torch.cat([fmap, sentence], dim=1)
            img2 = self.image_map(image)
            out = self.gamma(joint) * img2 + self.beta(joint)
            vec = self.gem(out) + self.hierarchy(image[f"{self.kind}.stages"])
            return self.query_fc(vec), out
        attn = torch.softmax(scores, dim=1)  # over positions, per word
        attended = attn.transpose(1, 2) @ pos  # (B, L, H)
        joint = torch.cat([attended, words], dim=2).transpose(1, 2)  # (B, 2H, L)
        out = self.gamma(joint) * attended.transpose(1, 2) + self.beta(joint)  # (B, H, L)
        vec = self.gem(out, dim=2, mask=mask[:, None, :])
        return self.query_fc(vec), out

    def sentence(self, text: Feats) -> torch.Tensor:
        words, mask = self.words(text[f"{self.kind}.tokens"]), text[f"{self.kind}.mask"].to(torch.float32)
        return (words * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


@MODELS.register("crn")
class CRN(CompositionModel):
    """Local + global networks with mutual learning; retrieval feature [normalize(local), normalize(global)]."""

    default_loss_weights = {"cls_local": 1.0, "cls_global": 1.0, "relation_local": 1.0, "relation_global": 1.0,
                            "img": 1.0, "perceptual": 1.0, "kl": 1.0}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        if config.embed_dim % 2:
            raise CirlabError(f"crn: embed_dim must be even (two branches of embed_dim / 2), got {config.embed_dim}")
        super().__init__(config, image_encoder, text_encoder)
        opts = config.options
        self.shared = str(opts.get("shared_encoders", False)).lower() in ("1", "true", "yes")
        if not self.shared:
            self.image_encoder_global = copy.deepcopy(image_encoder)
            self.text_encoder_global = copy.deepcopy(text_encoder)
        h = config.embed_dim // 2
        stages, word_dim = list(image_encoder.stage_channels), int(text_encoder.token_dim)
        if not word_dim:
            raise CirlabError(f"crn needs a text encoder with token features; {config.text_encoder!r} has none")
        temps = {"local": float(opts.get("temperature_local", 7.0)),
                 "global": float(opts.get("temperature_global", 4.0))}
        self.branches = nn.ModuleDict({k: CRNBranch(k, stages, word_dim, h, temps[k]) for k in BRANCHES})
        with torch.no_grad():
            self.norm_scale.fill_(float(opts.get("norm_scale", 10.0)))
        self.global_scale = nn.Parameter(torch.tensor(float(opts.get("norm_scale", 10.0))))
        self.kl_scale = float(opts.get("kl_scale", 10.0))

    def image_encoders(self) -> list[nn.Module]:
        return [self.image_encoder] if self.shared else [self.image_encoder, self.image_encoder_global]

    def text_encoders(self) -> list[nn.Module]:
        return [self.text_encoder] if self.shared else [self.text_encoder, self.text_encoder_global]

    def encode_image(self, images: torch.Tensor) -> Feats:
        out: Feats = {}
        for kind, encoder in zip(BRANCHES, self.image_encoders() * (2 if self.shared else 1), strict=True):
            if self.shared and kind == "global":
                out["global.map"], out["global.stages"] = out["local.map"], out["local.stages"]
                continue
            maps = encoder.stage_maps(images)
            out[f"{kind}.map"] = maps[-1]
            out[f"{kind}.stages"] = torch.cat([m.mean(dim=(2, 3)) for m in maps], dim=1)
        return out

    def encode_text(self, texts: list[str]) -> Feats:
        out: Feats = {}
        for kind, encoder in zip(BRANCHES, self.text_encoders() * (2 if self.shared else 1), strict=True):
            if self.shared and kind == "global":
                out["global.tokens"], out["global.mask"] = out["local.tokens"], out["local.mask"]
                continue
            out[f"{kind}.tokens"], out[f"{kind}.mask"] = encoder.forward_tokens(texts)
        return out

    def _scaled(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        return (self.norm_scale if kind == "local" else self.global_scale) * F.normalize(x, dim=-1)

    def compose_features(self, image_feats: Feats, text_feats: Feats) -> torch.Tensor:
        return torch.cat([F.normalize(self.branches[k].query(image_feats, text_feats)[0], dim=-1) for k in BRANCHES],
                         dim=1)

    def target_features(self, image_feats: Feats) -> torch.Tensor:
        return torch.cat([F.normalize(self.branches[k].image_vector(image_feats), dim=-1) for k in BRANCHES], dim=1)

    def training_losses(self, source: Feats, text: Feats, target: Feats, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        q, t, logits = {}, {}, {}
        for kind in BRANCHES:
            branch = self.branches[kind]
            target_map = branch.image_map(target)
            q[kind], query_out = branch.query(source, text)
            t[kind] = branch.image_vector(target, target_map)
            terms[f"cls_{kind}"] = base_loss(self._scaled(kind, q[kind]), self._scaled(kind, t[kind]))
            rel = branch.relation(branch.image_vector(source), t[kind])
            terms[f"relation_{kind}"] = base_loss(self._scaled(kind, rel), self._scaled(kind, branch.sentence(text)))
            if kind == "local":
                terms["perceptual"] = F.mse_loss(query_out, target_map)
            logits[kind] = self.kl_scale * F.normalize(q[kind], dim=-1) @ F.normalize(t[kind], dim=-1).t()
        n = {k: F.normalize(v, dim=-1) for k, v in q.items()}
        m = {k: F.normalize(v, dim=-1) for k, v in t.items()}
        terms["img"] = sum(F.mse_loss(a[x], a[y].detach()) for a in (n, m) for x, y in (("local", "global"),
                                                                                         ("global", "local")))
        terms["kl"] = sum(F.kl_div(F.log_softmax(logits[x], dim=1), F.softmax(logits[y].detach(), dim=1),
                                   reduction="batchmean") for x, y in (("local", "global"), ("global", "local")))
        return terms
