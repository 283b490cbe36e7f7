"""TIRG's soft triplet loss, vectorised with autograd over every valid (anchor, positive, negative)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cirlab.losses.base import LOSSES


@LOSSES.register("soft_triplet")
def soft_triplet_loss(query: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean over triplets of log(1 + exp(d(a, p) - d(a, n))) with squared Euclidean d.

    The 2B features [query; target] carry labels [0..B-1, 0..B-1]: each anchor's positive is its pair
    and every other-label feature is a negative. The released code samples 3 triplets per anchor and
    writes the backward in numpy; averaging over all triplets is the same objective in expectation.
    """
    b = query.shape[0]
    x = torch.cat([query, target], dim=0)
    labels = torch.arange(b, device=x.device).repeat(2)
    sq = (x * x).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp_min(0.0)
    idx = torch.arange(2 * b, device=x.device)
    partner = (idx + b) % (2 * b)
    d_pos = dist[idx, partner]
    negative = labels[:, None] != labels[None, :]
    return F.softplus(d_pos[:, None] - dist)[negative].mean()
