"""Encoder names with a prefix (`hf:<name-or-path>`): a second registry keyed by the prefix, so that open-ended
families (any Hugging Face model) sit beside the fixed names without if/else chains in `build_model`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from cirlab.encoders.base import IMAGE_ENCODERS, TEXT_ENCODERS
from cirlab.utils.errors import CirlabError
from cirlab.utils.registry import Registry

#: prefix -> factory(argument, spec) for image encoders, e.g. "hf" -> build_hf_image_encoder.
IMAGE_ENCODER_PREFIXES: Registry = Registry("image encoder prefix")
#: prefix -> factory(argument, spec, texts=..., assets_dir=...) for text encoders.
TEXT_ENCODER_PREFIXES: Registry = Registry("text encoder prefix")


def _resolve(name: str, plain: Registry, prefixes: Registry) -> Callable[..., Any]:
    prefix, sep, argument = name.partition(":")
    if not sep:
        if name in plain:
            return plain.get(name)
        hints = ", ".join(f"{p}:<name-or-path>" for p in prefixes.names())
        raise CirlabError(f"unknown {plain.kind} {name!r}; choose from: {', '.join(plain.names())}"
                          + (f", or {hints}" if hints else ""))
    if not argument:
        raise CirlabError(f"{plain.kind} {name!r}: give a model name or directory after '{prefix}:'")
    factory = prefixes.get(prefix)
    bound = functools.partial(factory, argument)
    bound.Options = factory.Options  # type: ignore[attr-defined]  (see `declares`)
    return bound


def resolve_image_encoder(name: str) -> Callable[..., Any]:
    """The factory for an image-encoder name: a registered name, or `prefix:argument` (e.g. `hf:./my-vit`)."""
    return _resolve(name, IMAGE_ENCODERS, IMAGE_ENCODER_PREFIXES)


def resolve_text_encoder(name: str) -> Callable[..., Any]:
    """The factory for a text-encoder name: a registered name, or `prefix:argument` (e.g. `hf:bert-base-uncased`)."""
    return _resolve(name, TEXT_ENCODERS, TEXT_ENCODER_PREFIXES)
