"""Chunked recall and top-k against a brute-force reference, with ties, multiple targets and exclusion."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cirlab.evaluation.recall import first_hit_ranks, recall_from_ranks, subset_ranks, topk_chunked


def brute_force_ranks(q: np.ndarray, g: np.ndarray, ql: np.ndarray, gl: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Stable sort by descending score (ties: lower gallery position first), excluded item removed."""
    out = []
    for i in range(len(q)):
        scores = g @ q[i]
        order = [j for j in sorted(range(len(g)), key=lambda j: (-scores[j], j)) if j != exclude[i]]
        hits = [r for r, j in enumerate(order) if gl[j] == ql[i]]
        out.append(hits[0] if hits else -1)
    return np.array(out)


@pytest.mark.parametrize("chunk", [1, 7, None])
def test_first_hit_ranks_match_brute_force_with_ties(chunk: int | None) -> None:
    rng = np.random.default_rng(0)
    # integer-valued features make many exact ties; few labels make several correct targets per query
    g = rng.integers(-2, 3, size=(60, 4)).astype(np.float32)
    q = rng.integers(-2, 3, size=(25, 4)).astype(np.float32)
    gl = rng.integers(0, 6, size=60)
    ql = rng.integers(0, 7, size=25)  # label 6 never occurs: no possible hit
    exclude = rng.integers(-1, 60, size=25)
    got = first_hit_ranks(torch.from_numpy(q), torch.from_numpy(g), {"l": ql}, {"l": gl}, exclude, chunk=chunk)["l"]
    np.testing.assert_array_equal(got, brute_force_ranks(q, g, ql, gl, exclude))


def test_recall_counts_queries_without_possible_hit_as_misses() -> None:
    ranks = np.array([0, 3, -1, 10])
    assert recall_from_ranks(ranks, (1, 5, 50)) == {1: 0.25, 5: 0.5, 50: 0.75}


def test_excluded_query_image_is_not_a_hit() -> None:
    g = torch.eye(3)
    q = torch.tensor([[1.0, 0.0, 0.0]])
    # the best match (position 0) shares the label but is excluded -> the next same-label item ranks
    ranks = first_hit_ranks(q, g, {"l": np.array([5])}, {"l": np.array([5, 1, 5])}, np.array([0]))["l"]
    assert ranks.tolist() == [1]
    ranks = first_hit_ranks(q, g, {"l": np.array([5])}, {"l": np.array([5, 1, 5])}, np.array([-1]))["l"]
    assert ranks.tolist() == [0]


def test_topk_chunked_matches_full_topk_and_respects_exclusion() -> None:
    torch.manual_seed(0)
    q, g = torch.randn(33, 8), torch.randn(101, 8)
    exclude = np.arange(33)
    scores, idx = topk_chunked(q, g, 10, exclude, chunk=5)
    full = q @ g.t()
    full[torch.arange(33), torch.arange(33)] = -torch.inf
    ref = torch.topk(full, 10, dim=1)
    torch.testing.assert_close(scores, ref.values)
    assert not (idx == torch.arange(33)[:, None]).any()


def test_subset_ranks_rank_within_candidates_only() -> None:
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    # candidates exclude position 0 (the best overall); target 3 is behind 1 among {1, 2, 3}
    assert subset_ranks(q, g, [np.array([1, 2, 3])], np.array([3])).tolist() == [1]
    assert subset_ranks(q, g, [np.array([1, 2])], np.array([3])).tolist() == [-1]
