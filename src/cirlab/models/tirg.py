"""TIRG (Vo et al., CVPR 2019): gated residual composition, on the pooled vector or on the last conv map."""

from __future__ import annotations

import torch
from torch import nn

from cirlab.encoders import ImageEncoder, TextEncoder
from cirlab.models.base import MODELS, CompositionModel, ModelConfig


@MODELS.register("tirg")
class TIRG(CompositionModel):
    """f = w_g * sigmoid(G([x, t])) * x + w_r * R([x, t]), w_g = 1, w_r = 10 at init."""

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        d, dt = config.embed_dim, config.text_dim
        self.gate = nn.Sequential(nn.BatchNorm1d(d + dt), nn.ReLU(), nn.Linear(d + dt, d))
        self.residual = nn.Sequential(nn.BatchNorm1d(d + dt), nn.ReLU(), nn.Linear(d + dt, d + dt), nn.ReLU(),
                                      nn.Linear(d + dt, d))
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        xt = torch.cat([image_feats, text_feats], dim=1)
        return (self.weights[0] * torch.sigmoid(self.gate(xt)) * image_feats
                + self.weights[1] * self.residual(xt))


@MODELS.register("tirg_lastconv")
class TIRGLastConv(CompositionModel):
    """TIRG applied to the last conv map with the text tiled over the grid, then pooled and projected."""

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__(config, image_encoder, text_encoder)
        c, dt = image_encoder.map_channels, config.text_dim

        def branch() -> nn.Sequential:
            return nn.Sequential(nn.BatchNorm2d(c + dt), nn.Conv2d(c + dt, c + dt, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(c + dt, c, 3, padding=1))

        self.gate, self.residual = branch(), branch()
        self.weights = nn.Parameter(torch.tensor([1.0, 10.0]))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.forward_map(images)

    def compose_features(self, image_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        b, _, h, w = image_feats.shape
        tiled = text_feats[:, :, None, None].expand(b, text_feats.shape[1], h, w)
        xt = torch.cat([image_feats, tiled], dim=1)
        fmap = self.weights[0] * torch.sigmoid(self.gate(xt)) * image_feats + self.weights[1] * self.residual(xt)
        return self.image_encoder.pool(fmap)

    def target_features(self, image_feats: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.pool(image_feats)
