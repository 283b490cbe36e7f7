"""Any Hugging Face vision model as an image encoder: `--image-encoder hf:<name-or-path>`.

Supported families: CLIP (the vision tower with its projection; a full CLIP checkpoint or a vision-only one),
ViT-style token models (ViT, DeiT, DINOv2: CLS token), Swin and ResNet (their pooled output). Token outputs
are reshaped into a map so that map-based models (tirg_lastconv, film_san, crn) work too; `stage_maps` gives
four evenly spaced hidden states (token models) or the stage outputs (Swin, ResNet).

Deviation worth knowing: `pool(fmap)` (used by map-based models) averages the map and, for CLIP, applies the
post-layernorm and the visual projection to that average, whereas CLIP's own vector uses the CLS token.
Options: `project` (see `projection`), `pooling` = auto | cls | mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cirlab.encoders._optional import PROJECT_HELP, projection
from cirlab.encoders.base import EncoderSpec, ImageEncoder, declares
from cirlab.encoders.hf_common import hf_source, load_clip_tower, load_hf, model_type, transformers_module
from cirlab.encoders.prefix import IMAGE_ENCODER_PREFIXES
from cirlab.utils.options import option, parse_options

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_TYPES = ("clip", "clip_vision_model")


def _tokens_to_map(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(B, T, C) tokens -> (B, C, s, s) map, dropping leading special tokens (CLS, distillation)."""
    b, t, c = tokens.shape
    for skip in (0, 1, 2):
        s = math.isqrt(t - skip)
        if s * s == t - skip:
            return tokens[:, skip:].transpose(1, 2).reshape(b, c, s, s), skip
    raise ValueError(f"cannot arrange {t} tokens on a square grid")


class HFImageEncoder(ImageEncoder):
    """A transformers vision model -> pooled vector -> optional projection to `out_dim`."""

    def __init__(self, name: str, out_dim: int, project: bool = True, pooling: str = "auto") -> None:
        super().__init__()
        tf = transformers_module(f"image encoder hf:{name}")
        self.source, self.kind = name, model_type(name)
        self.is_clip = self.kind in _CLIP_TYPES
        self.model = (load_clip_tower(tf.CLIPVisionModelWithProjection, name, "vision_config") if self.is_clip
                      else load_hf(tf.AutoModel, name))
        cfg = self.model.config
        self.native_size = int(getattr(cfg, "image_size", 0) or 0)
        self.pooling = pooling
        hidden = getattr(cfg, "hidden_sizes", None)
        self.map_channels = int(hidden[-1] if hidden else getattr(cfg, "num_features", 0) or cfg.hidden_size)
        native = int(cfg.projection_dim) if self.is_clip else self.map_channels
        self.out_dim, self.proj = projection(native, out_dim, project)
        self.mean, self.std = self._normalisation(name)
        self._stage_channels: list[int] | None = None

    def _normalisation(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        path = Path(hf_source(name)) / "preprocessor_config.json"
        if path.is_file():
            data = json.loads(path.read_text())
            if "image_mean" in data and "image_std" in data:
                return tuple(data["image_mean"]), tuple(data["image_std"])
        return (CLIP_MEAN, CLIP_STD) if self.is_clip else (self.mean, self.std)

    def _run(self, images: torch.Tensor, hidden: bool = False) -> Any:
        kwargs: dict[str, Any] = {"output_hidden_states": hidden}
        if self.native_size and images.shape[-1] != self.native_size and self.kind != "resnet":
            kwargs["interpolate_pos_encoding"] = True
        return self.model(pixel_values=images, **kwargs)

    def _as_map(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden if hidden.dim() == 4 else _tokens_to_map(hidden)[0]

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self._as_map(self._run(images).last_hidden_state)

    def _map_head(self, vec: torch.Tensor) -> torch.Tensor:
        if self.is_clip:
            return self.model.visual_projection(self.model.vision_model.post_layernorm(vec))
        return vec

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.proj(self._map_head(fmap.mean(dim=(2, 3))))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self._run(images)
        if self.is_clip:
            return self.proj(out.image_embeds)
        last = out.last_hidden_state
        if last.dim() == 4:
            vec = last.mean(dim=(2, 3))
        elif self.pooling == "mean":
            vec = last.mean(1)
        else:
            skip = _tokens_to_map(last)[1]
            pooled = getattr(out, "pooler_output", None)
            if skip and self.pooling in ("auto", "cls"):
                vec = last[:, 0]
            elif pooled is not None:
                vec = pooled.flatten(1)
            else:
                vec = last.mean(1)
        return self.proj(vec)

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        out = self._run(images, hidden=True)
        states = getattr(out, "reshaped_hidden_states", None) or out.hidden_states
        states = list(states[1:])
        if states[0].dim() == 3:  # one state per transformer layer: take four evenly spaced ones
            n = len(states)
            states = [states[min(n - 1, round((i + 1) * n / 4) - 1)] for i in range(min(4, n))]
        return [self._as_map(s) for s in states]

    @property
    def stage_channels(self) -> list[int]:  # type: ignore[override]
        if self._stage_channels is None:
            side = self.native_size or 64
            with torch.no_grad():
                was = self.training
                self.eval()
                maps = self.stage_maps(torch.zeros(1, 3, side, side, device=next(self.parameters()).device))
                self.train(was)
            self._stage_channels = [m.shape[1] for m in maps]
        return self._stage_channels

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.model.parameters())


@dataclass
class HFImageOptions:
    """`--image-option`s of hf:<name-or-path> image encoders."""

    project: bool = option(True, PROJECT_HELP)
    pooling: Literal["auto", "cls", "mean"] = option("auto", "token models' vector: the CLS token (auto, where the "
                                                             "model has one; else its pooled output) or the mean")


@IMAGE_ENCODER_PREFIXES.register("hf")
@declares(HFImageOptions)
def build_hf_image_encoder(name: str, spec: EncoderSpec) -> HFImageEncoder:
    opts = parse_options(HFImageOptions, spec.options, "image encoder", f"hf:{name}")
    return HFImageEncoder(name, spec.out_dim, project=opts.project, pooling=opts.pooling)

