"""CLIP4Cir's Combiner (Baldrati et al., 2022-2023): a small fusion network on frozen image/text features.

With i the image feature (d = its size) and w the text feature:
`i' = Dropout(ReLU(Linear(d -> proj)(i)))`, `w' = Dropout(ReLU(Linear(d -> proj)(w)))`;
`mlp = Linear(hidden -> d)(Dropout(ReLU(Linear(2 proj -> hidden)([i', w']))))`;
`lambda = sigmoid(Linear(hidden -> 1)(Dropout(ReLU(Linear(2 proj -> hidden)([i', w'])))))`;
`out = normalize(mlp + lambda * w + (1 - lambda) * i)`; the target is `normalize(i)` of the target image.
Dropout 0.5 everywhere; `proj = 4d`, `hidden = 8d` as in the paper (options `proj_dim`, `hidden_dim` shrink
them, which matters at d = 1280). The logits are `100 * out . targets^T` (a fixed scale; `norm_scale` option),
trained with `--loss batch_based_classification`. Stage 2 of CLIP4Cir: freeze both encoders
(`--freeze-image --freeze-text`, encoders with `project=false`) and train on cached features
(`--feature-cache`).

Deviations: CLIP gives both modalities the same size; other encoder pairs may not, so when the text size
differs from d a Linear(Dt -> d) maps w first (absent in CLIP4Cir). The output size is the image feature's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models._layers import identity_or_linear
from cirlab.models.base import MODELS, CompositionModel, ModelConfig


@MODELS.register("combiner")
class Combiner(CompositionModel):
    """normalize(MLP([i', w']) + lambda * w + (1 - lambda) * i), lambda = sigmoid(MLP([i', w']))."""

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, opts = image_encoder.out_dim, config.options
        proj, hidden = int(opts.get("proj_dim", 4 * d)), int(opts.get("hidden_dim", 8 * d))
        self.dim = d
        self.text_align = identity_or_linear(text_encoder.out_dim, d)
        self.image_proj = nn.Sequential(nn.Linear(d, proj), nn.ReLU(), nn.Dropout(0.5))
        self.text_proj = nn.Sequential(nn.Linear(d, proj), nn.ReLU(), nn.Dropout(0.5))
        self.combine = nn.Sequential(nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, d))
        self.dynamic_scalar = nn.Sequential(nn.Linear(2 * proj, hidden), nn.ReLU(), nn.Dropout(0.5),
                                            nn.Linear(hidden, 1), nn.Sigmoid())
        with torch.no_grad():
            self.norm_scale.fill_(float(opts.get("norm_scale", 100.0)))
        self.norm_scale.requires_grad_(False)

    @property
    def embed_dim(self) -> int:
        return self.dim

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        w = self.text_align(text_feats)
        joint = torch.cat([self.image_proj(image_feats), self.text_proj(w)], dim=1)
        lam = self.dynamic_scalar(joint)
        return F.normalize(self.combine(joint) + lam * w + (1.0 - lam) * image_feats, dim=-1)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return F.normalize(image_feats, dim=-1)
