"""Both base losses against direct, loop-based formulas."""

from __future__ import annotations

import math

import torch

from cirlab.losses import LOSSES


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def test_soft_triplet_equals_mean_over_all_triplets() -> None:
    torch.manual_seed(0)
    q, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    x = torch.cat([q, t])
    labels = list(range(5)) * 2
    terms = []
    for a in range(10):
        p = (a + 5) % 10
        for n in range(10):
            if labels[n] != labels[a]:
                terms.append(math.log1p(math.exp(_sqdist(x[a], x[p]) - _sqdist(x[a], x[n]))))
    expected = sum(terms) / len(terms)
    assert abs(float(LOSSES.get("soft_triplet")(q, t)) - expected) < 1e-9


def test_batch_classification_equals_cross_entropy_formula() -> None:
    torch.manual_seed(1)
    q, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        logits = [float(q[i] @ t[j]) for j in range(4)]
        expected += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    expected /= 4
    assert abs(float(LOSSES.get("batch_based_classification")(q, t)) - expected) < 1e-9


def test_losses_have_gradients_and_prefer_matching_pairs() -> None:
    torch.manual_seed(2)
    t = torch.randn(8, 16)
    for name in ("soft_triplet", "batch_based_classification"):
        q = torch.randn(8, 16, requires_grad=True)
        loss = LOSSES.get(name)(q, t)
        loss.backward()
        assert q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
        assert float(LOSSES.get(name)(t.clone(), t)) < loss.item()
