"""Chunked retrieval maths: ranks and top-k without ever holding the full queries x gallery matrix.

The tie rule, the one order everything in cirlab ranks by (evaluation here, `topk_chunked`, the exact index
search built on it, the IVF re-ranking in `cirlab.index.searchers`): **score descending, then gallery position
ascending** - exactly the order of a stable sort by descending score. `sort_by_rule` applies it to any
(scores, positions) rows; an excluded position is removed from its query's ranking (its score counts as -inf).

Cost: memory stays O(gallery x dim + chunk x gallery). `first_hit_ranks` computes each chunk's scores with one
matrix product and then needs only two comparison passes per label kind (no sort, no top-k): the best hit's
score and position come from the few gallery items that share the query's label, and its rank is the count of
scores strictly above it plus the ties at an earlier position (bench/bench_eval.py compares it with one full
`torch.topk`, the floor of any exact top-k evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

DEFAULT_CHUNK_ELEMENTS = 1 << 24  # chunk x gallery scores held at once per 2 threads (64 MB of float32)
#: Each chunk's matrix product reads the whole gallery, so many threads need taller chunks to keep busy (bench:
#: 167-row chunks of a 100K gallery matched one full product on 2 threads, not on 16); at most 8x the default.
MAX_CHUNK_SCALE = 8
#: A chunk gathers its queries' same-label gallery scores one by one while they number at most this share of
#: the chunk's scores; above it (labels shared by a large part of the gallery) one dense label mask is cheaper.
SPARSE_SHARE = 1 / 8


def _chunk_size(num_gallery: int, chunk: int | None) -> int:
    scale = min(MAX_CHUNK_SCALE, max(1, torch.get_num_threads() // 2))
    return chunk or max(1, scale * DEFAULT_CHUNK_ELEMENTS // max(1, num_gallery))


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


def sort_by_rule(scores: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row of (scores, positions) reordered by the tie rule: score descending, then position ascending."""
    by_position = torch.argsort(positions, dim=-1, stable=True)
    by_score = torch.argsort(scores.gather(-1, by_position), dim=-1, descending=True, stable=True)
    order = by_position.gather(-1, by_score)
    return scores.gather(-1, order), positions.gather(-1, order)


class _LabelGroups:
    """Gallery positions grouped by label (ascending within a group), and each query's group."""

    def __init__(self, query_labels: np.ndarray, gallery_labels: np.ndarray) -> None:
        q, g = np.asarray(query_labels), np.asarray(gallery_labels)
        values, codes = np.unique(np.concatenate([g, q]), return_inverse=True, equal_nan=False)
        self.gallery_codes, self.query_codes = codes[:len(g)], codes[len(g):]
        self.order = np.argsort(self.gallery_codes, kind="stable")
        self.counts = np.bincount(self.gallery_codes, minlength=len(values))
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])

    def best_hits(self, scores: torch.Tensor, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of a chunk: the best finite score among same-label items and its lowest position at that
        score (-inf and the gallery size where a row has no finite same-label item)."""
        n, ng = scores.shape
        qc = self.query_codes[start:stop]
        lengths = self.counts[qc]
        total = int(lengths.sum())
        if total > SPARSE_SHARE * n * ng:
            relevant = torch.from_numpy(self.gallery_codes)[None, :] == torch.from_numpy(qc)[:, None]
            relevant &= torch.isfinite(scores)
            best = torch.where(relevant, scores, -torch.inf).max(dim=1).values
            positions = torch.arange(ng).expand(n, ng)
            best_pos = torch.where(relevant & (scores == best[:, None]), positions, ng).min(dim=1).values
            return best, best_pos
        rows = np.repeat(np.arange(n), lengths)
        within = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        cols = torch.from_numpy(self.order[np.repeat(self.offsets[qc], lengths) + within])
        rows_t = torch.from_numpy(rows)
        vals = scores[rows_t, cols]
        vals = torch.where(torch.isfinite(vals), vals, -torch.inf)
        best = torch.full((n,), -torch.inf, dtype=scores.dtype).scatter_reduce(0, rows_t, vals, "amax")
        at_best = (vals == best[rows_t]) & (vals > -torch.inf)
        best_pos = torch.full((n,), ng, dtype=torch.long).scatter_reduce(0, rows_t[at_best], cols[at_best], "amin")
        return best, best_pos


def _count_buffer(rows: int, num_gallery: int) -> torch.Tensor:
    """Where comparisons are written as 0/1 floats: summing floats is several times faster than summing bools, and
    exact while every partial sum (at most the gallery size) is an integer the float type holds exactly."""
    return torch.empty(rows, num_gallery, dtype=torch.float32 if num_gallery <= 1 << 24 else torch.float64)


def _ranks_of(scores: torch.Tensor, best: torch.Tensor, best_pos: torch.Tensor, buffer: torch.Tensor) -> np.ndarray:
    """0-based rank of the item (best, best_pos) of each row under the tie rule; -1 where best_pos is past the end."""
    n, ng = scores.shape
    threshold = best[:, None]
    ranks, tied = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=buffer.dtype)
    for lo in range(0, n, len(buffer)):  # the buffer holds a slice of the chunk's rows
        hi = min(n, lo + len(buffer))
        out = buffer[:hi - lo]
        ranks[lo:hi] = torch.gt(scores[lo:hi], threshold[lo:hi], out=out).sum(dim=1).long()
        tied[lo:hi] = torch.eq(scores[lo:hi], threshold[lo:hi], out=out).sum(dim=1)
    found = best_pos < ng
    several = torch.nonzero(found & (tied > 1)).squeeze(1)  # ties at the hit's score: earlier positions rank ahead
    if len(several):
        earlier = torch.arange(ng)[None, :] < best_pos[several, None]
        ranks[several] += ((scores[several] == threshold[several]) & earlier).sum(dim=1)
    ranks[~found] = -1
    return ranks.numpy()


def first_hit_ranks(queries: torch.Tensor, gallery: torch.Tensor, query_labels: dict[str, np.ndarray],
                    gallery_labels: dict[str, np.ndarray], exclude: np.ndarray | None = None,
                    chunk: int | None = None) -> dict[str, np.ndarray]:
    """For each label kind, the 0-based rank of the best-ranked hit of every query (-1: no hit possible).

    A gallery item is a hit when its label equals the query's; `exclude[q]` (>= 0) removes one gallery
    position from query q's ranking. Scores are dot products (pass normalised vectors for cosine); ranks follow
    the tie rule of this module. Items whose score is not finite are never hits (+inf scores still rank ahead).
    """
    nq = queries.shape[0]
    groups = {kind: _LabelGroups(q_labels, gallery_labels[kind]) for kind, q_labels in query_labels.items()}
    out = {k: np.empty(nq, dtype=np.int64) for k in query_labels}
    ng = gallery.shape[0]
    buffer = _count_buffer(max(1, min(nq, _chunk_size(ng, chunk), DEFAULT_CHUNK_ELEMENTS // max(1, ng))), ng)
    for start, stop, scores in _score_chunks(queries, gallery, exclude, chunk):
        for kind, group in groups.items():
            out[kind][start:stop] = _ranks_of(scores, *group.best_hits(scores, start, stop), buffer)
    return out


def recall_from_ranks(ranks: np.ndarray, ks: tuple[int, ...]) -> dict[int, float]:
    """Recall@K = share of queries whose first hit ranks below K (queries with no possible hit count as misses)."""
    ranks = np.asarray(ranks)
    found = ranks >= 0
    return {k: float(np.mean(found & (ranks < k))) if len(ranks) else 0.0 for k in ks}


def topk_chunked(queries: torch.Tensor, gallery: torch.Tensor, k: int, exclude: np.ndarray | None = None,
                 chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k scores and gallery positions per query, (Q, k) each, in the tie-rule order, chunk by chunk.

    `torch.topk` alone picks arbitrarily among items tied at the k-th score; one extra candidate per row shows
    where such a tie straddles the cut, and only those rows are recomputed exactly."""
    nq, ng = queries.shape[0], gallery.shape[0]
    k = min(k, ng)
    scores_out = torch.empty(nq, k, dtype=queries.dtype)
    index_out = torch.empty(nq, k, dtype=torch.long)
    for start, stop, scores in _score_chunks(queries, gallery, exclude, chunk):
        top = torch.topk(scores, min(k + 1, ng), dim=1)
        values, index = top.values[:, :k], top.indices[:, :k]
        if k < ng and k > 0:
            straddle = torch.nonzero(top.values[:, k] == top.values[:, k - 1]).squeeze(1)
            if len(straddle):
                values, index = values.clone(), index.clone()
                values[straddle], index[straddle] = _exact_topk(scores[straddle], values[straddle, k - 1], k)
        scores_out[start:stop], index_out[start:stop] = sort_by_rule(values, index)
    return scores_out, index_out


def _exact_topk(scores: torch.Tensor, kth: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows whose k-th score is tied beyond the cut: everything above it, then the tied items by position."""
    above = (scores > kth[:, None]) | torch.isnan(scores)  # torch.topk ranks NaN above every number
    tied = scores == kth[:, None]
    room = (k - above.sum(dim=1))[:, None]
    keep = above | (tied & (torch.cumsum(tied, dim=1) <= room))
    index = torch.nonzero(keep)[:, 1].reshape(len(scores), k)
    return scores.gather(1, index), index


def subset_first_hit_ranks(queries: torch.Tensor, gallery: torch.Tensor, candidates: Sequence[np.ndarray],
                           query_labels: np.ndarray, gallery_labels: np.ndarray,
                           exclude: np.ndarray | None = None) -> np.ndarray:
    """Rank of each query's best-ranked hit among its own candidate positions only (-1: no candidate is a hit).

    Same definitions as `first_hit_ranks` (hit = equal label, tie rule, `exclude[q]` removed from the ranking),
    with each candidate scored on its own (a handful per query: CIRR's Recall_subset)."""
    ranks = np.full(len(candidates), -1, dtype=np.int64)
    g_labels, q_labels = np.asarray(gallery_labels), np.asarray(query_labels)
    for q, cand in enumerate(candidates):
        cand = np.asarray(cand, dtype=np.int64)
        if exclude is not None and exclude[q] >= 0:
            cand = cand[cand != exclude[q]]
        if len(cand) == 0:
            continue
        s = (gallery[torch.as_tensor(cand)] @ queries[q]).numpy()
        hit = (g_labels[cand] == q_labels[q]) & np.isfinite(s)
        if not hit.any():
            continue
        best = s[hit].max()
        best_pos = cand[hit & (s == best)].min()
        ranks[q] = int(np.sum(s > best) + np.sum((s == best) & (cand < best_pos)))
    return ranks


def subset_ranks(queries: torch.Tensor, gallery: torch.Tensor, candidates: Sequence[np.ndarray],
                 targets: np.ndarray) -> np.ndarray:
    """Rank of each query's target gallery position among its own candidate positions (-1: target absent)."""
    return subset_first_hit_ranks(queries, gallery, candidates, np.asarray(targets), np.arange(gallery.shape[0]))
