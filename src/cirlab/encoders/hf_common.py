"""Shared loading for Hugging Face encoders (`hf:<name-or-path>`): local directories first, never a silent
download. A hub name is passed to `from_pretrained` as is, so it works where the model is in the local HF
cache (or the machine is online); every failure becomes one CirlabError line naming the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cirlab.encoders._optional import require
from cirlab.utils.errors import CirlabError


def hf_source(name: str) -> str:
    """A local directory (checked) or a hub name; something that looks like a path must exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    if name.startswith((".", "/", "~")) or path.exists():
        raise CirlabError(f"Hugging Face model directory not found: {name}")
    return name


def load_hf(loader: Any, name: str, **kwargs: Any) -> Any:
    """`loader.from_pretrained(source)` with errors turned into one CirlabError line."""
    source = hf_source(name)
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CirlabError(f"cannot load Hugging Face model {name!r} (not a local model directory, and not in "
                          f"the local HF cache on this offline machine?): {first}") from None


def transformers_module(purpose: str) -> Any:
    return require("transformers", "hf", purpose)


def model_type(name: str) -> str:
    """The `model_type` of a hub model or local directory (reads only its config)."""
    tf = transformers_module(f"hf:{name}")
    return str(load_hf(tf.AutoConfig, name).model_type)


def load_clip_tower(loader: Any, name: str, tower: str) -> Any:
    """One tower of a CLIP checkpoint (`tower` = "vision_config" | "text_config") with its projection; a full
    CLIP directory keeps `projection_dim` at the top level, which the tower's config must inherit."""
    tf = transformers_module(f"hf:{name}")
    config = load_hf(tf.AutoConfig, name)
    if hasattr(config, tower):
        sub = getattr(config, tower)
        sub.projection_dim = config.projection_dim
        return load_hf(loader, name, config=sub)
    return load_hf(loader, name)
