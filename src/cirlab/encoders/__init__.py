"""Encoders: image trunks and text models behind two registries (IMAGE_ENCODERS, TEXT_ENCODERS)."""

from cirlab.encoders.base import IMAGE_ENCODERS, TEXT_ENCODERS, EncoderSpec, ImageEncoder, TextEncoder
from cirlab.encoders.image import resnet, small_cnn  # noqa: F401  (registrations)
from cirlab.encoders.text import lstm  # noqa: F401  (registrations)

__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "EncoderSpec", "ImageEncoder", "TextEncoder"]
