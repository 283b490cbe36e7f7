"""TIRG's baselines: image only, text only, and concatenation followed by an MLP."""

from __future__ import annotations

import torch
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models.base import MODELS, CompositionModel, ModelConfig


@MODELS.register("imgonly")
class ImageOnly(CompositionModel):
    """Query = the reference image's feature; the text is ignored."""

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return image_feats


@MODELS.register("textonly")
class TextOnly(CompositionModel):
    """Query = the text's feature (needs text_dim == embed_dim)."""

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return text_feats


def concat_mlp(dim_in: int, dim_out: int, dropout: float = 0.1) -> nn.Sequential:
    """BN(2D) -> ReLU -> Linear(2D, 2D) -> BN -> ReLU -> Dropout -> Linear(2D, D)."""
    return nn.Sequential(nn.BatchNorm1d(dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.BatchNorm1d(dim_in),
                         nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim_in, dim_out))


@MODELS.register("concat")
class Concat(CompositionModel):
    """Query = MLP([phi_x, phi_t])."""

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        self.mlp = concat_mlp(config.embed_dim + config.text_dim, config.embed_dim)

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([image_feats, text_feats], dim=1))
