"""Base retrieval losses on (scaled, normalised) query and target features, behind the LOSSES registry."""

from cirlab.losses import batch_classification, soft_triplet  # noqa: F401  (registrations)
from cirlab.losses.base import LOSSES

__all__ = ["LOSSES"]
