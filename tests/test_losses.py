"""The base losses against direct, loop-based formulas; the soft triplet's sampling and released gradient."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from cirlab.losses import LOSSES
from cirlab.losses.soft_triplet import SoftTripletLoss, sample_triplets
from cirlab.utils.errors import CirlabError

SOFT_TRIPLETS = ("soft_triplet", "soft_triplet_true_grad", "soft_triplet_all")


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).sum())


def _loop_loss(x: torch.Tensor, triplets: list[tuple[int, int, int]]) -> float:
    return sum(math.log1p(math.exp(_sqdist(x[a], x[p]) - _sqdist(x[a], x[n]))) for a, p, n in triplets) / len(triplets)


def test_soft_triplet_all_equals_mean_over_all_triplets() -> None:
    torch.manual_seed(0)
    q, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    x = torch.cat([q, t])
    labels = list(range(5)) * 2
    triplets = [(a, (a + 5) % 10, n) for a in range(10) for n in range(10) if labels[n] != labels[a]]
    assert abs(float(LOSSES.get("soft_triplet_all")(q, t)) - _loop_loss(x, triplets)) < 1e-9


def test_sampled_triplets_follow_the_release_rule() -> None:
    """Per anchor, in order: its positive (the pair) and 3 distinct negatives; fewer when fewer exist."""
    b = 6
    rows = sample_triplets(b, 3, torch.Generator().manual_seed(0)).tolist()
    assert len(rows) == 2 * b * 3
    for anchor in range(2 * b):
        mine = rows[3 * anchor:3 * anchor + 3]
        assert all(a == anchor and p == (anchor + b) % (2 * b) for a, p, _ in mine)
        negatives = [n for _, _, n in mine]
        assert len(set(negatives)) == 3 and all(n % b != anchor % b for n in negatives)
    assert len(sample_triplets(2, 3)) == 4 * 2  # 2B - 2 = 2 negatives per anchor: both kept
    every = sample_triplets(3, 0).tolist()
    assert every == [[a, (a + 3) % 6, n] for a in range(6) for n in range(6) if n % 3 != a % 3]


def test_sampling_is_uniform_and_reproducible() -> None:
    counts = torch.zeros(8)
    for i in range(300):
        counts += torch.bincount(sample_triplets(4, 3, torch.Generator().manual_seed(i))[:3, 2], minlength=8)
    assert counts[[0, 4]].sum() == 0 and counts[[1, 2, 3, 5, 6, 7]].min() > 100  # 150 expected each
    draws = []
    for _ in range(2):
        torch.manual_seed(7)  # the trainer seeds (and checkpoints) torch's global generator
        draws.append(sample_triplets(5))
    assert torch.equal(draws[0], draws[1])
    with pytest.raises(CirlabError, match="at least 2 pairs"):
        LOSSES.get("soft_triplet")(torch.randn(1, 4), torch.randn(1, 4))


def test_soft_triplet_on_given_triplets_has_the_released_half_gradient() -> None:
    torch.manual_seed(3)
    q, t = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    triplets = sample_triplets(4, 3, torch.Generator().manual_seed(1))
    grads, values = {}, {}
    for name in ("soft_triplet", "soft_triplet_true_grad"):
        qq, tt = q.clone().requires_grad_(), t.clone().requires_grad_()
        loss = LOSSES.get(name)(qq, tt, triplets=triplets)
        loss.backward()
        values[name], grads[name] = float(loss.detach()), torch.cat([qq.grad, tt.grad])
    expected = _loop_loss(torch.cat([q, t]), [tuple(r) for r in triplets.tolist()])
    assert abs(values["soft_triplet"] - expected) < 1e-12 and values["soft_triplet_true_grad"] == values["soft_triplet"]
    x = torch.cat([q, t]).requires_grad_()
    a, p, n = triplets.unbind(1)
    torch.nn.functional.softplus(((x[a] - x[p]) ** 2).sum(1) - ((x[a] - x[n]) ** 2).sum(1)).mean().backward()
    torch.testing.assert_close(grads["soft_triplet_true_grad"], x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grads["soft_triplet"], 0.5 * x.grad, rtol=1e-12, atol=1e-12)


def test_released_gradient_passes_the_distance_clamp() -> None:
    """Identical anchor and positive (a clamped distance): the release's backward, f * (x_a - x_p) = 0 there, is
    still half the true gradient, and finite."""
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    triplets = torch.tensor([[0, 2, 1], [1, 3, 0], [2, 0, 3]])
    grads = []
    for loss_fn in (SoftTripletLoss(), SoftTripletLoss(true_gradient=True)):
        x = q.clone().requires_grad_()
        loss_fn(x, x.detach().clone(), triplets=triplets).backward()
        grads.append(x.grad)
    assert torch.isfinite(grads[0]).all() and grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], 0.5 * grads[1])


def test_batch_classification_equals_cross_entropy_formula() -> None:
    torch.manual_seed(1)
    q, t = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    expected = 0.0
    for i in range(4):
        logits = [float(q[i] @ t[j]) for j in range(4)]
        expected += -logits[i] + math.log(sum(math.exp(v) for v in logits))
    expected /= 4
    assert abs(float(LOSSES.get("batch_based_classification")(q, t)) - expected) < 1e-9


@pytest.mark.parametrize("name", [*SOFT_TRIPLETS, "batch_based_classification"])
def test_losses_have_gradients_and_prefer_matching_pairs(name: str) -> None:
    torch.manual_seed(2)
    t = torch.randn(8, 16)
    q = torch.randn(8, 16, requires_grad=True)
    loss_fn = LOSSES.get(name)
    if name in SOFT_TRIPLETS:  # the same triplets for both calls
        loss_fn = functools.partial(loss_fn, triplets=sample_triplets(8, 3, torch.Generator().manual_seed(0)))
    loss = loss_fn(q, t)
    loss.backward()
    assert loss.shape == () and q.grad is not None and torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    assert float(loss_fn(t.clone(), t)) < loss.item()
