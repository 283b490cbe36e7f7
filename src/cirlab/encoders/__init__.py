"""Encoders: image trunks and text models behind two registries (IMAGE_ENCODERS, TEXT_ENCODERS)."""

from cirlab.encoders.base import IMAGE_ENCODERS, TEXT_ENCODERS, EncoderSpec, ImageEncoder, TextEncoder
from cirlab.encoders.image import efficientnet, hf, resnet, small_cnn  # noqa: F401  (registrations)
from cirlab.encoders.prefix import resolve_image_encoder, resolve_text_encoder
from cirlab.encoders.text import crn_lstm, lstm  # noqa: F401  (registrations)
from cirlab.encoders.text import hf as hf_text  # noqa: F401  (registrations)

__all__ = ["IMAGE_ENCODERS", "TEXT_ENCODERS", "EncoderSpec", "ImageEncoder", "TextEncoder", "resolve_image_encoder",
           "resolve_text_encoder"]
