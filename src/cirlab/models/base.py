"""The composition-model contract and its registry.

Every model works in two steps so that frozen encoders can be cached (CLIP4Cir's stage 2):
`encode_image` / `encode_text` turn raw inputs into features, and `compose_features` /
`target_features` turn features into retrieval vectors. `compose(images, texts)` and
`embed_target(images)` are the end-to-end entry points used by evaluation, indexing and serving.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from cirlab.datasets.transforms import Preprocess
from cirlab.encoders import EncoderSpec, ImageEncoder, TextEncoder, resolve_image_encoder, resolve_text_encoder
from cirlab.utils.errors import CirlabError
from cirlab.utils.fields import check_fields
from cirlab.utils.options import drop_retired_fields, normalize_options, option, parse_options
from cirlab.utils.registry import Registry

Features = Any  # a tensor, or a dict of tensors for models that need maps or tokens
BaseLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model's shapes; saved as the "model" entry of config.json."""

    name: str = "tirg"
    image_encoder: str = "small_cnn"
    text_encoder: str = "lstm"
    embed_dim: int = field(default=512, metadata={"min": 1})
    text_dim: int = field(default=512, metadata={"min": 1})
    image_weights: str = ""
    image_options: dict[str, Any] = field(default_factory=dict)
    text_options: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    freeze_image: bool = False
    freeze_text: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelConfig:
        """Rebuild from config.json's model entry; every field is checked against its annotation (CirlabError).

        The options dicts stay as saved; `checked()` (called by `build_model`) reads them through the classes'
        typed options. Older files may hold `text_weights` (no flag ever set it): read while it is empty."""
        return cls(**check_fields(cls, drop_retired_fields(data, RETIRED_FIELDS, where), where))

    def checked(self) -> ModelConfig:
        """This config with the model's, image encoder's and text encoder's options checked against their typed
        options and converted (e.g. `"on"` -> `true`): a misspelt key or a bad value is one CirlabError here,
        before anything is built."""
        image_factory = resolve_image_encoder(self.image_encoder)
        text_factory = resolve_text_encoder(self.text_encoder)
        return replace(
            self,
            options=normalize_options(MODELS.get(self.name).Options, self.options, "model", self.name),
            image_options=normalize_options(image_factory.Options, self.image_options, "image encoder",
                                            self.image_encoder),
            text_options=normalize_options(text_factory.Options, self.text_options, "text encoder",
                                           self.text_encoder))


#: ModelConfig fields removed from config.json, with the only value an old file may hold for them.
RETIRED_FIELDS = {"text_weights": ""}


@dataclass
class ModelOptions:
    """The options every model has (`--model-option KEY=VALUE`, config.json's model.options); a model adds its own
    fields in a subclass and names it as its `Options`."""

    norm_scale: float = option(4.0, "initial value of the learnable scale s in the training normalisation "
                                    "s * v / ||v|| (google/tirg's NormalizationLayer: 4.0)")
    loss_weights: dict[str, float] = option({}, "weights of named loss terms over the model's defaults (also "
                                                "--loss-weight NAME=W)")
    lr_mults: dict[str, float] = option({}, "learning-rate multipliers of the model's named parameter groups "
                                            "('head' and the groups it lists)")


class CompositionModel(nn.Module):
    """Base class: holds the two encoders and the learnable normalisation scale (TIRG: init 4.0)."""

    #: The typed options (`--model-option`); `self.options` is the parsed instance.
    Options: ClassVar[type[ModelOptions]] = ModelOptions
    #: Extra loss terms and their default weights, overridable with the `loss_weights` option.
    default_loss_weights: dict[str, float] = {}
    #: Learning-rate multipliers of the groups `lr_groups` names, overridable with the `lr_mults` option.
    default_lr_mults: dict[str, float] = {}

    def __init__(self, config: ModelConfig, image_encoder: ImageEncoder, text_encoder: TextEncoder) -> None:
        super().__init__()
        self.config = config
        self.options = parse_options(type(self).Options, config.options, "model", config.name)
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.norm_scale = nn.Parameter(torch.tensor(float(self.options.norm_scale)))
        self.loss_weights = {**self.default_loss_weights, **self.options.loss_weights}

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def train(self, mode: bool = True) -> CompositionModel:
        """Frozen encoders stay in eval mode (fixed BN statistics, no dropout), so that their features are the
        same in training, in evaluation and in the feature cache."""
        super().train(mode)
        for encoder in self.frozen_encoders():
            encoder.eval()
        return self

    def frozen_encoders(self) -> list[nn.Module]:
        """The encoders the config freezes (`freeze_image`, `freeze_text`)."""
        return ((self.image_encoders() if self.config.freeze_image else [])
                + (self.text_encoders() if self.config.freeze_text else []))

    def image_encoders(self) -> list[nn.Module]:
        """Every image encoder of the model (CRN has one per branch): freezing and the backbone lr apply to all."""
        return [self.image_encoder]

    def text_encoders(self) -> list[nn.Module]:
        """Every text encoder of the model."""
        return [self.text_encoder]

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
        """Training-time normalisation `s * v / ||v||` with the learnable scale s: google/tirg's NormalizationLayer
        (parity case `tirg_normalization`), without an epsilon as released (a zero vector gives NaN)."""
        return self.norm_scale * x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    # model folder -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, preprocess: Preprocess | None = None) -> None:
        """Write this model as a folder (`cirlab.models.folder`): config.json with the model config and the
        `preprocess` block, model.safetensors and the text encoder's assets. `cirlab.load` needs the preprocess
        block (`Pipeline.save_pretrained` writes the pipeline's)."""
        from cirlab.models.folder import save_model_folder  # folder.py builds models with this module

        save_model_folder(self, directory, preprocess)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> CompositionModel:
        """The model of a folder written by `save_pretrained`, or of a run directory (also one written before
        model folders existed), in eval mode on `device` ('cpu', 'cuda', 'cuda:N' or 'auto')."""
        from cirlab.models.folder import load_model_folder

        model = load_model_folder(directory, device)
        if not isinstance(model, cls):
            raise CirlabError(f"{directory} holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    # training -----------------------------------------------------------------------------------
    def training_losses(self, source: Features, text: Features, target: Features, base_loss: BaseLoss
                        ) -> dict[str, torch.Tensor]:
        """Named loss terms for one batch; the trainer sums `loss_weights[name] * term` (base weight 1)."""
        query = self.compose_features(source, text)
        return {"base": base_loss(self.normalize(query), self.normalize(self.target_features(target)))}

    def total_loss(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(self.loss_weights.get(name, 1.0) * value for name, value in terms.items())

    def lr_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters with their own learning-rate multiplier (e.g. FiLM+SAN's branch weights at 0.01x)."""
        return {}

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters at `lr * backbone_lr_mult`: the image trunk (models with several trunks extend this)."""
        return [p for enc in self.image_encoders() for p in enc.backbone_parameters()]

    def parameter_groups(self, lr: float, backbone_lr_mult: float) -> list[dict[str, Any]]:
        """Optimiser groups: the named `lr_groups` at their multipliers, the image trunk at
        `lr * backbone_lr_mult`, everything else ("head") at `lr`."""
        mults = {**self.default_lr_mults, "head": 1.0, **self.options.lr_mults}
        named = self.lr_groups()
        unknown = sorted(set(mults) - set(named) - {"head"})
        if unknown:
            raise CirlabError(f"model {self.config.name!r} has no learning-rate group {unknown[0]!r}; "
                              f"groups: {', '.join(['head', *named])}")
        groups, taken = [], set()
        for name, params in [*named.items(), ("backbone", self.backbone_parameters())]:
            mult = backbone_lr_mult if name == "backbone" else float(mults.get(name, 1.0))
            mine = [p for p in params if p.requires_grad and id(p) not in taken]
            taken.update(id(p) for p in mine)
            if mine:
                groups.append({"params": mine, "lr": lr * mult, "lr_mult": mult, "name": name})
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        head = float(mults["head"])
        return [{"params": rest, "lr": lr * head, "lr_mult": head, "name": "head"}, *groups]


MODELS: Registry[type[CompositionModel]] = Registry("model")


def build_model(config: ModelConfig, texts: list[str] | None = None, assets_dir: Path | None = None
                ) -> CompositionModel:
    """Build encoders and the composition model from a config (texts: training texts for a vocabulary).

    Every options dict is checked first (`ModelConfig.checked`), so a misspelt option fails before any weights
    are built or loaded."""
    config.checked()
    model_cls = MODELS.get(config.name)
    image_encoder = resolve_image_encoder(config.image_encoder)(EncoderSpec(
        out_dim=config.embed_dim, weights=config.image_weights, options=dict(config.image_options)))
    text_encoder = resolve_text_encoder(config.text_encoder)(
        EncoderSpec(out_dim=config.text_dim, options=dict(config.text_options)), texts=texts, assets_dir=assets_dir)
    model = model_cls(config, image_encoder, text_encoder)
    for encoder in model.frozen_encoders():
        encoder.requires_grad_(False)
    return model
