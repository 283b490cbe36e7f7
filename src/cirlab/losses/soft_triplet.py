"""TIRG's soft triplet loss, as google/tirg releases it (@ c58daa066d8af1a5b3de1a0ef6d112519ddda611:
`ImgTextCompositionBase.compute_soft_triplet_loss_` and `torch_functions.TripletLoss` / `MyTripletLossFunc`).

The 2B features X = [query; target] carry labels [0..B-1, 0..B-1]: an anchor's positive is its pair, every
other-label feature is a negative. The loss is the mean over a list of triplets (a, p, n) of
log(1 + exp(D[a, p] - D[a, n])), D the squared Euclidean distances clamp(|x|^2 + |y|^2 - 2 x.y, min=0).

Release behaviour (the default, registered as `soft_triplet`):
- triplets are SAMPLED: for each anchor, in order, the release lists its valid triplets, shuffles them and keeps 3,
  i.e. 3 distinct negatives drawn uniformly (all of them when fewer exist). cirlab draws them from torch's CPU
  generator (the global one unless a `generator` is given), which the trainer seeds and checkpoints, so a resumed
  run samples what the uninterrupted run would. The release draws from numpy's global RNG, so the draws themselves
  differ; the distribution is the same.
- the gradient is the release's hand-written backward: exactly 0.5x the true gradient on the stacked matrix X (the
  factor 2 of d|a - b|^2 is missing), passed straight through the clamp. The loss value is unchanged.

Options, as registered losses (`--loss`):
- `soft_triplet_true_grad`: the same sampled triplets with the exact autograd gradient (the paper's objective).
- `soft_triplet_all`: every valid triplet with the exact gradient (cirlab's former default): the expectation of the
  sampled loss, without sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cirlab.losses.base import LOSSES
from cirlab.utils.errors import CirlabError

#: The release's gradient factor on X (its hand-written backward).
RELEASE_GRADIENT_SCALE = 0.5


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the incoming gradient by `scale`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def pairwise_sq_distances(x: torch.Tensor, clamp_gradient: bool = True) -> torch.Tensor:
    """The release's `pairwise_distances(x)`: clamp(|x_i|^2 + |x_j|^2 - 2 x_i.x_j, min=0), (N, N).

    With `clamp_gradient=False` the gradient passes through the clamp as if it were absent (the release's
    backward); the values are the same."""
    sq = (x * x).sum(1)
    raw = sq.view(-1, 1) + sq.view(1, -1) - 2.0 * (x @ x.t())
    if clamp_gradient:
        return raw.clamp_min(0.0)
    return raw + (raw.clamp_min(0.0) - raw).detach()


def sample_triplets(batch: int, per_anchor: int = 3, generator: torch.Generator | None = None) -> torch.Tensor:
    """(2B * min(per_anchor, 2B - 2), 3) long tensor of (anchor, positive, negative) rows, anchor-major, on the
    CPU: per anchor, `per_anchor` distinct negatives drawn uniformly from torch's CPU generator (`generator`, or
    the global one); `per_anchor=0` lists every negative in index order."""
    n = 2 * batch
    if batch < 2:
        raise CirlabError(f"the soft triplet loss needs at least 2 pairs per batch (got {batch}); raise --batch-size "
                          "or use --loss batch_based_classification")
    idx = torch.arange(n)
    negatives = idx.expand(n, n)[(idx[:, None] % batch) != (idx[None, :] % batch)].view(n, n - 2)
    if per_anchor > 0:
        keys = torch.rand(n, n - 2, generator=generator)
        negatives = negatives.gather(1, keys.argsort(dim=1)[:, :min(per_anchor, n - 2)])
    k = negatives.shape[1]
    anchors = idx.repeat_interleave(k)
    return torch.stack([anchors, (anchors + batch) % n, negatives.reshape(-1)], dim=1)


def triplet_loss(x: torch.Tensor, triplets: torch.Tensor, gradient_scale: float = 1.0) -> torch.Tensor:
    """Mean over `triplets` rows (a, p, n) of log(1 + exp(D[a, p] - D[a, n])) on the rows of `x` (a 0-dim tensor;
    the release returns the same value with shape (1,)). `gradient_scale` != 1 scales the gradient entering `x`
    and lets it pass the distance clamp, as the release's backward does (0.5)."""
    if gradient_scale != 1.0:
        x = _ScaleGradient.apply(x, gradient_scale)
    dist = pairwise_sq_distances(x, clamp_gradient=gradient_scale == 1.0)
    t = triplets.to(device=x.device, dtype=torch.long)
    return F.softplus(dist[t[:, 0], t[:, 1]] - dist[t[:, 0], t[:, 2]]).mean()


@dataclass(frozen=True)
class SoftTripletLoss:
    """Base loss `(query (B, D), target (B, D)) -> scalar`; the defaults are the release's (see the module doc).

    `triplets_per_anchor`: 3 as released, 0 for every valid triplet. `true_gradient`: the exact autograd gradient
    instead of the release's 0.5x. A call may pass the exact `triplets` (rows into [query; target]) or the
    `generator` to draw them from."""

    triplets_per_anchor: int = 3
    true_gradient: bool = False

    def __call__(self, query: torch.Tensor, target: torch.Tensor, triplets: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        if triplets is None:
            triplets = sample_triplets(query.shape[0], self.triplets_per_anchor, generator)
        scale = 1.0 if self.true_gradient else RELEASE_GRADIENT_SCALE
        return triplet_loss(torch.cat([query, target], dim=0), triplets, scale)


LOSSES.register("soft_triplet")(SoftTripletLoss())
LOSSES.register("soft_triplet_true_grad")(SoftTripletLoss(true_gradient=True))
LOSSES.register("soft_triplet_all")(SoftTripletLoss(triplets_per_anchor=0, true_gradient=True))
