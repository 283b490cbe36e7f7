"""Chunked retrieval maths: ranks and top-k without ever holding the full queries x gallery matrix.

Memory stays O(gallery x dim + chunk x gallery). Ties are broken by gallery position (the lower
position ranks first), exactly as a stable sort by descending score would order them.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # chunk x gallery scores held at once (64 MB of float32)


def _chunk_size(num_gallery: int, chunk: int | None) -> int:
    return chunk or max(1, DEFAULT_CHUNK_ELEMENTS // max(1, num_gallery))


def _score_chunks(queries: torch.Tensor, gallery: torch.Tensor, exclude: np.ndarray | None, chunk: int | None
                  ) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, scores of queries[start:stop] against the gallery), excluded positions set to -inf."""
    nq = queries.shape[0]
    step = _chunk_size(gallery.shape[0], chunk)
    for start in range(0, nq, step):
        stop = min(nq, start + step)
        scores = queries[start:stop] @ gallery.t()
        if exclude is not None:
            ex = torch.as_tensor(np.asarray(exclude[start:stop]))
            rows = torch.nonzero(ex >= 0).squeeze(1)
            scores[rows, ex[rows]] = -torch.inf
        yield start, stop, scores


def first_hit_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_labels: dict[str, np.ndarray],
                    gallery_labels: dict[str, np.ndarray], exclude: np.ndarray | None = None,
                    chunk: int | None = None) -> dict[str, np.ndarray]:
    """For each label kind, the 0-based rank of the best-ranked hit of every query (-1: no hit possible).

    A gallery item is a hit when its label equals the query's; `exclude[q]` (>= 0) removes one gallery
    position from query q's ranking. Scores are dot products (pass normalised vectors for cosine).
    """
    nq, ng = queries.shape[0], gallery.shape[0]
    positions = torch.arange(ng)
    g_labels = {k: torch.as_tensor(np.asarray(v)) for k, v in gallery_labels.items()}
    out = {k: np.empty(nq, dtype=np.int64) for k in query_labels}
    for start, stop, scores in _score_chunks(queries, gallery, exclude, chunk):
        for kind, q_labels in query_labels.items():
            ql = torch.as_tensor(np.asarray(q_labels[start:stop]))
            relevant = (g_labels[kind][None, :] == ql[:, None]) & torch.isfinite(scores)
            best = torch.where(relevant, scores, torch.full_like(scores, -torch.inf)).max(dim=1).values
            tied = relevant & (scores == best[:, None])
            best_pos = torch.where(tied, positions[None, :], ng).min(dim=1).values
            earlier_tie = (scores == best[:, None]) & (positions[None, :] < best_pos[:, None]) & torch.isfinite(scores)
            ahead = (scores > best[:, None]).sum(1) + earlier_tie.sum(1)
            ahead[~relevant.any(1)] = -1
            out[kind][start:stop] = ahead.numpy()
    return out


def recall_from_ranks(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K = share of queries whose first hit ranks below K (queries with no possible hit count as misses)."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    return {k: float(np.mean(found & (ranks < k))) if len(ranks) else 0.0 for k in ks}


def topk_chunked(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude: np.ndarray | None = None,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and gallery positions per query, (Q, k) each, computed chunk by chunk."""
    nq, ng = queries.shape[0], gallery.shape[0]
    k = min(k, ng)
    scores_out = torch.empty(nq, k, dtype=queries.dtype)
    index_out = torch.empty(nq, k, dtype=torch.long)
    for start, stop, scores in _score_chunks(queries, gallery, exclude, chunk):
        top = torch.topk(scores, k, dim=1)
        scores_out[start:stop], index_out[start:stop] = top.values, top.indices
    return scores_out, index_out


def subset_ranks(queries: torch.Tensor, gallery: torch.Tensor, candidates: list[np.ndarray],
                 targets: np.ndarray) -> np.ndarray:
    """Rank of each query's target gallery position among its own candidate positions (-1: target absent)."""
    ranks = np.full(len(candidates), -1, dtype=np.int64)
    for q, cand in enumerate(candidates):
        cand = np.asarray(cand, dtype=np.int64)
        hit = np.nonzero(cand == targets[q])[0]
        if len(cand) == 0 or len(hit) == 0:
            continue
        s = (gallery[torch.as_tensor(cand)] @ queries[q]).numpy()
        t = hit[0]
        ranks[q] = int(np.sum(s > s[t]) + np.sum((s == s[t]) & (np.arange(len(cand)) < t)))
    return ranks
