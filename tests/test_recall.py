"""Chunked recall and top-k against a brute-force reference, with ties, multiple targets, exclusion, label kinds
and candidate subsets; the fast first-hit ranks against the full-mask computation they replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cirlab.evaluation import recall
from cirlab.evaluation.recall import (
    first_hit_ranks,
    recall_from_ranks,
    sort_by_rule,
    subset_first_hit_ranks,
    subset_ranks,
    topk_chunked,
)


def rule_order(scores: np.ndarray, excluded: int = -1) -> list[int]:
    """The tie rule by hand: stable sort by descending score (ties: lower gallery position first)."""
    return [j for j in sorted(range(len(scores)), key=lambda j: (-scores[j], j)) if j != excluded]


def brute_force_ranks(q: np.ndarray, g: np.ndarray, ql: np.ndarray, gl: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    out = []
    for i in range(len(q)):
        hits = [r for r, j in enumerate(rule_order(g @ q[i], exclude[i])) if gl[j] == ql[i]]
        out.append(hits[0] if hits else -1)
    return np.array(out)


def brute_force_subset(q: np.ndarray, g: np.ndarray, cands: list[np.ndarray], ql: np.ndarray, gl: np.ndarray,
                       exclude: np.ndarray) -> np.ndarray:
    out = []
    for i, cand in enumerate(cands):
        scores = g @ q[i]
        ranked = [j for j in sorted(cand, key=lambda j: (-scores[j], j)) if j != exclude[i]]
        hits = [r for r, j in enumerate(ranked) if gl[j] == ql[i]]
        out.append(hits[0] if hits else -1)
    return np.array(out)


def full_mask_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_labels: dict, gallery_labels: dict,
                    exclude: np.ndarray) -> dict[str, np.ndarray]:
    """The computation `first_hit_ranks` replaced (label masks over the whole score matrix), as a reference."""
    scores = queries @ gallery.t()
    rows = np.nonzero(exclude >= 0)[0]
    scores[rows, exclude[rows]] = -torch.inf
    ng = gallery.shape[0]
    positions = torch.arange(ng)
    out = {}
    for kind, ql in query_labels.items():
        relevant = (torch.as_tensor(gallery_labels[kind])[None, :] == torch.as_tensor(ql)[:, None])
        relevant &= torch.isfinite(scores)
        best = torch.where(relevant, scores, -torch.inf).max(dim=1).values
        best_pos = torch.where(relevant & (scores == best[:, None]), positions[None, :], ng).min(dim=1).values
        earlier = (scores == best[:, None]) & (positions[None, :] < best_pos[:, None]) & torch.isfinite(scores)
        ahead = (scores > best[:, None]).sum(1) + earlier.sum(1)
        ahead[~relevant.any(1)] = -1
        out[kind] = ahead.numpy()
    return out


def tie_heavy(seed: int, nq: int = 25, ng: int = 60) -> tuple[np.ndarray, ...]:
    """Integer-valued features (many exact ties), few labels (several targets per query), exclusions."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-2, 3, size=(ng, 4)).astype(np.float32)
    q = rng.integers(-2, 3, size=(nq, 4)).astype(np.float32)
    return g, q, rng.integers(-1, ng, size=nq), rng


@pytest.mark.parametrize("chunk", [1, 7, None])
@pytest.mark.parametrize("share", [0.0, 1.0])  # 0: every chunk takes the dense label mask, 1: the sparse gather
def test_first_hit_ranks_match_brute_force_with_ties(chunk: int | None, share: float,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recall, "SPARSE_SHARE", share)
    g, q, exclude, rng = tie_heavy(0)
    labels_q = {"l": rng.integers(0, 7, size=25), "coarse": rng.integers(0, 2, size=25),
                "unique": rng.integers(0, 60, size=25)}  # label 6 of "l" never occurs: no possible hit
    labels_g = {"l": rng.integers(0, 6, size=60), "coarse": rng.integers(0, 2, size=60), "unique": np.arange(60)}
    got = first_hit_ranks(torch.from_numpy(q), torch.from_numpy(g), labels_q, labels_g, exclude, chunk=chunk)
    for kind in labels_q:
        np.testing.assert_array_equal(got[kind], brute_force_ranks(q, g, labels_q[kind], labels_g[kind], exclude))


@pytest.mark.parametrize("seed", range(4))
def test_first_hit_ranks_identical_to_the_full_mask_computation(seed: int) -> None:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    q = torch.nn.functional.normalize(torch.randn(97, 16), dim=1)
    g = torch.nn.functional.normalize(torch.randn(503, 16), dim=1)
    g[100:110] = g[5]  # duplicated gallery vectors: exact ties at different positions
    g[200] = q[3]
    labels_q = {"a": rng.integers(0, 40, size=97), "b": rng.integers(0, 3, size=97)}
    labels_g = {"a": rng.integers(0, 40, size=503), "b": rng.integers(0, 3, size=503)}
    labels_g["a"][100:110] = labels_q["a"][:10]
    exclude = rng.integers(-1, 503, size=97)
    exclude[3] = 200
    got = first_hit_ranks(q, g, labels_q, labels_g, exclude, chunk=13)
    ref = full_mask_ranks(q, g, labels_q, labels_g, exclude)
    for kind in labels_q:
        np.testing.assert_array_equal(got[kind], ref[kind])


def test_non_finite_scores_are_never_hits_but_plus_inf_ranks_ahead() -> None:
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[torch.inf, 0.0], [torch.nan, 0.0], [0.5, 0.0], [0.7, 0.0]])
    got = first_hit_ranks(q, g, {"l": np.array([1])}, {"l": np.array([1, 1, 1, 0])})["l"]
    ref = full_mask_ranks(q, g, {"l": np.array([1])}, {"l": np.array([1, 1, 1, 0])}, np.array([-1]))["l"]
    assert got.tolist() == ref.tolist() == [2]  # +inf and 0.7 rank ahead of the hit 0.5; NaN is nowhere


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


@pytest.mark.parametrize("k", [1, 5, 59, 60, 80])
def test_topk_chunked_follows_the_tie_rule(k: int) -> None:
    g, q, exclude, _ = tie_heavy(1, nq=30, ng=60)
    scores, idx = topk_chunked(torch.from_numpy(q), torch.from_numpy(g), k, exclude, chunk=7)
    for i in range(30):
        s = g @ q[i]
        s[exclude[i]] = -np.inf if exclude[i] >= 0 else s[exclude[i]]
        expected = rule_order(s)[:min(k, 60)]
        assert idx[i].tolist() == expected, i
        np.testing.assert_array_equal(scores[i].numpy(), s[expected])


def test_sort_by_rule_orders_by_score_then_position() -> None:
    scores = torch.tensor([[0.5, 0.75, 0.5, 0.75]])
    positions = torch.tensor([[7, 3, 2, 1]])
    s, p = sort_by_rule(scores, positions)
    assert p.tolist() == [[1, 3, 2, 7]] and s.tolist() == [[0.75, 0.75, 0.5, 0.5]]


def test_subset_ranks_rank_within_candidates_only() -> None:
    g = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    q = torch.tensor([[1.0, 0.0]])
    # candidates exclude position 0 (the best overall); target 3 is behind 1 among {1, 2, 3}
    assert subset_ranks(q, g, [np.array([1, 2, 3])], np.array([3])).tolist() == [1]
    assert subset_ranks(q, g, [np.array([1, 2])], np.array([3])).tolist() == [-1]


def test_subset_first_hit_ranks_match_brute_force_with_ties_labels_and_exclusion() -> None:
    g, q, exclude, rng = tie_heavy(2, nq=40, ng=30)
    cands = [rng.choice(30, size=int(rng.integers(0, 9)), replace=False) for _ in range(40)]  # unsorted lists
    for i in range(0, 40, 3):  # some queries' excluded item is one of their candidates
        if len(cands[i]):
            exclude[i] = cands[i][0]
    ql, gl = rng.integers(0, 4, size=40), rng.integers(0, 4, size=30)
    got = subset_first_hit_ranks(torch.from_numpy(q), torch.from_numpy(g), cands, ql, gl, exclude)
    np.testing.assert_array_equal(got, brute_force_subset(q, g, cands, ql, gl, exclude))
    # ties between candidates follow gallery positions, not the order of the candidate list
    tied = subset_ranks(torch.ones(1, 2), torch.ones(3, 2), [np.array([2, 0, 1])], np.array([1]))
    assert tied.tolist() == [1]


def test_count_passes_in_row_slices_smaller_than_a_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recall, "DEFAULT_CHUNK_ELEMENTS", 120)  # count buffer: 2 rows of the 60-item gallery
    g, q, exclude, rng = tie_heavy(3)
    ql, gl = rng.integers(0, 5, size=25), rng.integers(0, 5, size=60)
    for chunk in (7, None):  # chunks of 7 rows; None: 2 rows x the thread scale
        got = first_hit_ranks(torch.from_numpy(q), torch.from_numpy(g), {"l": ql}, {"l": gl}, exclude, chunk=chunk)
        np.testing.assert_array_equal(got["l"], brute_force_ranks(q, g, ql, gl, exclude))
