"""Encoder contracts and registries: image encoders give maps and vectors, text encoders give vectors
(and, where they can, per-token features). Both are built from a name plus an `EncoderSpec`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from cirlab.utils.errors import CirlabError
from cirlab.utils.registry import Registry

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class EncoderSpec:
    """What an encoder factory needs: output size, optional weights (image trunks), and the options as given
    (a JSON dict; the factory reads it through its typed `Options`)."""

    out_dim: int = 512
    weights: str = ""  # local state-dict / model path; never a URL
    options: dict[str, Any] = field(default_factory=dict)


def declares(options: type) -> Callable[[F], F]:
    """Decorator: the encoder factory's typed options dataclass, kept as `factory.Options` (what `--list-options`
    prints and `ModelConfig.checked` validates against)."""
    def decorator(factory: F) -> F:
        factory.Options = options  # type: ignore[attr-defined]
        return factory

    return decorator


class ImageEncoder(nn.Module):
    """A convolutional (or transformer) trunk plus global pooling and a linear projection to `out_dim`."""

    out_dim: int
    map_channels: int
    #: Channels of every map `stage_maps` returns, shallow to deep (multi-stage models size their layers by it).
    stage_channels: list[int]
    #: Mean/std the trunk expects; preprocessing reads them from here.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        """Last feature map, (B, map_channels, h, w)."""
        raise NotImplementedError

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global pooling + projection of a feature map to (B, out_dim)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.pool(self.forward_map(images))

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps of every stage, shallow to deep (multi-stage models such as CRN use them).

        The default exposes only the last map; encoders with stages override this and `stage_channels`."""
        return [self.forward_map(images)]

    def backbone_parameters(self) -> list[nn.Parameter]:
        """Parameters that get the backbone learning-rate multiplier (the trunk, not the projection)."""
        return list(self.parameters())


class TextEncoder(nn.Module):
    """Maps a batch of strings to (B, out_dim); may expose per-token features for attention models."""

    out_dim: int
    token_dim: int = 0

    def forward(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def forward_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, token_dim) features and a (B, L) bool mask of real tokens."""
        raise NotImplementedError(f"{type(self).__name__} does not expose token features")

    def save_assets(self, run_dir: Path) -> None:
        """Write what rebuilding this encoder needs besides the weights (a vocabulary, a tokenizer)."""


IMAGE_ENCODERS: Registry = Registry("image encoder")
TEXT_ENCODERS: Registry = Registry("text encoder")


def read_state_dict(path: str | Path, what: str = "image encoder weights") -> dict[str, torch.Tensor]:
    """A local `.safetensors` or PyTorch state dict (names -> tensors), read without running code from the file
    (`weights_only=True`); anything else is one CirlabError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CirlabError(f"{what} not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a PNG, a truncated or foreign file: torch and safetensors raise many types
        raise CirlabError(f"cannot read {what} {path}: not a PyTorch state dict or .safetensors file "
                          f"({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise CirlabError(f"{what} {path} are not a state dict (names -> tensors)")
    return state
