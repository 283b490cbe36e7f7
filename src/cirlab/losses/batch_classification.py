"""Batch-based classification: each query must pick its own target among the batch's targets."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cirlab.losses.base import LOSSES


@LOSSES.register("batch_based_classification")
def batch_classification_loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the B x B similarity `query @ target.T` with labels arange(B)."""
    logits = query @ target.t()
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
