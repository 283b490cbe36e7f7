"""The composition-model contract and its registry.

Every model works in two steps so that frozen encoders can be cached (CLIP4Cir's stage 2):
`encode_image` / `encode_text` turn raw inputs into features, and `compose_features` /
`target_features` turn features into retrieval vectors. `compose(images, texts)` and
`embed_target(images)` are the end-to-end entry points used by evaluation, indexing and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, EncoderSpec, ImageEncoder, TextEncoder
from cirlab.utils.errors import CirlabError
from cirlab.utils.registry import Registry

Features = Any  # a tensor, or a dict of tensors for models that need maps or tokens
BaseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model's shapes; saved as the "model" entry of config.json."""

    name: str = "tirg"
    image_encoder: str = "small_cnn"
    text_encoder: str = "lstm"
    embed_dim: int = 512
    text_dim: int = 512
    image_weights: str = ""
    text_weights: str = ""
    image_options: dict[str, Any] = field(default_factory=dict)
    text_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    freeze_image: bool = False
    freeze_text: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise CirlabError(f"config.json model entry has unknown fields: {sorted(unknown)}")
        return cls(**data)


class CompositionModel(nn.Module):
    """Base class: holds the two encoders and the learnable normalisation scale (TIRG: init 4.0)."""

    #: Extra loss terms and their default weights, overridable with `options["loss_weights"]`.
    default_loss_weights: dict[str, float] = {}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.norm_scale = nn.Parameter(torch.tensor(float(config.options.get("norm_scale", 4.0))))
        weights = dict(self.default_loss_weights)
        weights.update(config.options.get("loss_weights", {}))
        self.loss_weights = weights

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    # features -----------------------------------------------------------------------------------
    def encode_image(self, images: torch.Tensor) -> Features:
        return self.image_encoder(images)

    def encode_text(self, texts: list[str]) -> Features:
        return self.text_encoder(texts)

    def compose_features(self, image_feats: Features, text_feats: Features) -> torch.Tensor:
        raise NotImplementedError

    def target_features(self, image_feats: Features) -> torch.Tensor:
        return image_feats

    # end to end ---------------------------------------------------------------------------------
    def compose(self, images: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """Query vectors (B, embed_dim) for reference images modified by texts."""
        return self.compose_features(self.encode_image(images), self.encode_text(texts))

    def embed_target(self, images: torch.Tensor) -> torch.Tensor:
        """Gallery vectors (B, embed_dim)."""
        return self.target_features(self.encode_image(images))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Training-time normalisation `s * v / ||v||` with the learnable scale s."""
        return self.norm_scale * F.normalize(x, dim=-1)

    # training -----------------------------------------------------------------------------------
    def training_losses(self, source: Features, text: Features, target: Features, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch; the trainer sums `loss_weights[name] * term` (base weight 1)."""
        query = self.compose_features(source, text)
        return {"base": base_loss(self.normalize(query), self.normalize(self.target_features(target)))}

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in terms.items())

    def parameter_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Optimiser groups: the image trunk at `lr * backbone_lr_mult`, everything else at `lr`."""
        backbone = {id(p) for p in self.image_encoder.backbone_parameters()}
        slow = [p for p in self.parameters() if id(p) in backbone and p.requires_grad]
        rest = [p for p in self.parameters() if id(p) not in backbone and p.requires_grad]
        groups = [{"params": rest, "lr": lr, "lr_mult": 1.0, "name": "head"}]
        if slow:
            groups.append({"params": slow, "lr": lr * backbone_lr_mult, "lr_mult": backbone_lr_mult,
                           "name": "backbone"})
        return groups


MODELS: Registry[type[CompositionModel]] = Registry("model")


def build_model(config: ModelConfig, texts: list[str] | None = None, assets_dir: Path | None = None
                ) -> CompositionModel:
    """Build encoders and the composition model from a config (texts: training texts for a vocabulary)."""
    model_cls = MODELS.get(config.name)
    image_encoder = IMAGE_ENCODERS.get(config.image_encoder)(EncoderSpec(
        out_dim=config.embed_dim, weights=config.image_weights, options=dict(config.image_options)))
    text_encoder = TEXT_ENCODERS.get(config.text_encoder)(
        EncoderSpec(out_dim=config.text_dim, weights=config.text_weights, options=dict(config.text_options)),
        texts=texts, assets_dir=assets_dir)
    model = model_cls(config, image_encoder, text_encoder)
    if config.freeze_image:
        model.image_encoder.requires_grad_(False)
    if config.freeze_text:
        model.text_encoder.requires_grad_(False)
    return model
