"""TIRG's baselines: image only, text only, and concatenation followed by an MLP.

All three equal google/tirg's released `img_text_composition_models.py` (@ c58daa066d8af1a5b3de1a0ef6d112519ddda611):
`SimpleModelImageOnly`, `SimpleModelTextOnly` and `Concat` (parity cases `concat_compose_*`, `concat_loss_*`).
Their released weights load with `load_reference_state_dict` (see `ReleasedTIRGHead`).
"""

from __future__ import annotations

import torch
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models.base import MODELS, ModelConfig
from cirlab.models.tirg import NORM_SCALE_NAMES, ReleasedTIRGHead


@MODELS.register("imgonly")
class ImageOnly(ReleasedTIRGHead):
    """Query = the reference image's feature; the text is ignored (the release's `SimpleModelImageOnly`)."""

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return image_feats


@MODELS.register("textonly")
class TextOnly(ReleasedTIRGHead):
    """Query = the text's feature (needs text_dim == embed_dim; the release's `SimpleModelTextOnly`)."""

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return text_feats


def concat_mlp(dim_in: int, dim_out: int, dropout: float = 0.1) -> nn.Sequential:
    """The release's `composer.m`: BN(2D) -> ReLU -> Linear(2D, 2D) -> BN -> ReLU -> Dropout(0.1) -> Linear(2D, D)."""
    return nn.Sequential(nn.BatchNorm1d(dim_in), nn.ReLU(), nn.Linear(dim_in, dim_in), nn.BatchNorm1d(dim_in),
                         nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim_in, dim_out))


@MODELS.register("concat")
class Concat(ReleasedTIRGHead):
    """Query = MLP([phi_x, phi_t]), image first (the release's `Concat`; our `mlp` is its `composer.m`)."""

    reference_prefixes = {**NORM_SCALE_NAMES, "mlp": "composer.m"}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        self.mlp = concat_mlp(config.embed_dim + config.text_dim, config.embed_dim)

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([image_feats, text_feats], dim=1))
