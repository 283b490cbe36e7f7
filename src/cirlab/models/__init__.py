"""Composition models behind one registry (MODELS); importing this package registers them all."""

from cirlab.models import baselines, combiner, composeae, crn, film_san, tirg  # noqa: F401  (registrations)
from cirlab.models.base import MODELS, CompositionModel, ModelConfig, build_model

__all__ = ["MODELS", "CompositionModel", "ModelConfig", "build_model"]
