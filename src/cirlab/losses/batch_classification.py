"""Batch-based classification: each query must pick its own target among the batch's targets, as google/tirg's
`compute_batch_based_classification_loss_` (@ c58daa0; parity cases `tirg_loss_batch_clf*`, `concat_loss_batch_clf*`).
On the model's scaled, normalised features the logits are s^2 * cosine (s = the learnable `norm_scale`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cirlab.losses.base import LOSSES


@LOSSES.register("batch_based_classification")
def batch_classification_loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the B x B similarity `query @ target.T` with labels arange(B)."""
    logits = query @ target.t()
    return F.cross_entropy(logits, torch.arange(query.shape[0], device=query.device))
