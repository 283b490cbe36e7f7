"""Nearest-neighbour search over L2-normalised vectors: exact (torch) or FAISS (HNSW, IVF-PQ).

Every searcher ranks by inner product, which is cosine similarity on normalised vectors, and breaks ties by one
rule: score descending, then gallery position ascending (so equal scores never make a result depend on k or on
the other queries of a batch). The stored
`vectors.npy` of an index is the source of truth: a FAISS structure can always be rebuilt from it (another
kind, more images) without re-encoding a single image. FAISS files are FAISS's own format, not pickles.
bench/index_bench.py measures build time, memory, latency and recall of each kind on 1M x 512 vectors.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from cirlab.utils.errors import CirlabError
from cirlab.utils.registry import Registry

#: Above this many images `--kind auto` leaves exact search (about 1 ms per 10K images x 512-d on one core)
#: for IVF-PQ with exact re-ranking, which builds in minutes on a small CPU where HNSW takes much longer
#: (bench/index_bench.py; HNSW stays available with `--kind hnsw`).
EXACT_UP_TO = 50_000
FAISS_FILE = "faiss.index"


def choose_kind(count: int, kind: str = "auto") -> str:
    """The searcher kind for a gallery of `count` images: `kind` itself unless it is "auto"."""
    if kind != "auto":
        SEARCHERS.get(kind)
        return kind
    return "exact" if count <= EXACT_UP_TO else "ivfpq"


class Searcher:
    """Top-k inner-product search over a fixed set of vectors; positions are rows of `vectors.npy`."""

    kind: ClassVar[str] = ""
    #: Whether `vectors` must be held in memory while searching (else it may stay memory-mapped on disk).
    needs_vectors_in_memory: ClassVar[bool] = True
    #: Whether the top k are always the first k of the top k' > k (true for exact search; approximate searches
    #: look wider for a larger k, so a batch must not search a query with another query's k).
    prefix_stable: ClassVar[bool] = False
    #: The parameters a kind reads (`--param KEY=VALUE`), all positive integers.
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, dim: int, params: dict[str, Any] | None = None) -> None:
        self.dim = dim
        self.params = dict(params or {})

    @classmethod
    def param_problem(cls, params: dict[str, Any]) -> tuple[str, str] | None:
        """(key, what is wrong) for the first parameter this kind cannot use, else None."""
        for key, value in params.items():
            if key not in cls.param_names:
                known = ", ".join(cls.param_names) or "none"
                return key, f"is not a parameter of index kind {cls.kind} (known: {known})"
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return key, f"must be a positive integer, got {value!r}"
        return None

    def build(self, vectors: np.ndarray) -> None:
        """Index `vectors` (N, dim) from scratch."""
        raise NotImplementedError

    def add(self, vectors: np.ndarray, all_vectors: np.ndarray) -> None:
        """Append `vectors` (the last rows of `all_vectors`) to an already built searcher."""
        raise NotImplementedError

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and positions (Q, k), best first; position -1 pads when fewer than k are found."""
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        """Write whatever the searcher needs beyond `vectors.npy` into `directory`."""

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        """Restore the searcher from `directory` and the index's vectors."""


SEARCHERS: Registry[type[Searcher]] = Registry("index kind")


@SEARCHERS.register("exact")
class ExactSearcher(Searcher):
    """Brute force with torch matrix products (chunked): exact, no build step, O(N x dim) per query."""

    kind = "exact"
    prefix_stable = True

    def build(self, vectors: np.ndarray) -> None:
        self._gallery = torch.from_numpy(np.require(vectors, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]))

    def add(self, vectors: np.ndarray, all_vectors: np.ndarray) -> None:
        self.build(all_vectors)

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        self.build(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        positions = np.full((len(q), k), -1, dtype=np.int64)
        n = len(self._gallery)
        if n == 0 or k < 1:
            return scores, positions
        step = max(1, 2**24 // n)  # at most 16M scores (64 MB) at a time
        for start in range(0, len(q), step):
            block = q[start:start + step] @ self._gallery.t()
            for row, (top_scores, top_positions) in enumerate(topk_by_score_then_position(block, k), start):
                scores[row, :len(top_scores)], positions[row, :len(top_positions)] = top_scores, top_positions
        return scores, positions


def topk_by_score_then_position(scores: torch.Tensor, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per row of `scores` (Q, N), the k best (scores, positions): score descending, then position ascending.

    `torch.topk` alone returns an arbitrary subset and order of tied scores, which differs with k; here every
    position scoring at least the k-th best score is a candidate, and a stable sort keeps ties in position
    order. NaN scores rank last.
    """
    scores = torch.nan_to_num(scores, nan=-torch.inf)
    k = min(k, scores.shape[1])
    kth = torch.topk(scores, k, dim=1).values[:, -1]
    out = []
    for row, threshold in zip(scores, kth, strict=True):
        candidates = torch.nonzero(row >= threshold).squeeze(1)  # ascending positions
        order = torch.sort(row[candidates], descending=True, stable=True).indices[:k]
        out.append((row[candidates[order]].numpy(), candidates[order].numpy()))
    return out


def order_by_score_then_position(scores: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row re-ordered by score descending, then position ascending (padding, -1 with -inf, last)."""
    scores, positions = scores.copy(), positions.copy()
    for row in range(len(scores)):
        order = np.lexsort((positions[row], -scores[row].astype(np.float64)))
        scores[row], positions[row] = scores[row, order], positions[row, order]
    return scores, positions


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise CirlabError("FAISS index kinds need faiss: pip install 'cirlab[serve]' (or faiss-cpu)") from None
    return faiss


class FaissSearcher(Searcher):
    """Shared FAISS plumbing: the index lives in `faiss.index`; subclasses make and tune it."""

    def make_index(self, vectors: np.ndarray) -> Any:
        raise NotImplementedError

    def search_parameters(self, k: int) -> Any:
        raise NotImplementedError

    def build(self, vectors: np.ndarray) -> None:
        self.index = self.make_index(vectors)
        self._add_chunked(vectors)

    def add(self, vectors: np.ndarray, all_vectors: np.ndarray) -> None:
        self._add_chunked(vectors)

    def _add_chunked(self, vectors: np.ndarray, chunk: int = 65_536) -> None:
        for start in range(0, len(vectors), chunk):
            self.index.add(np.ascontiguousarray(vectors[start:start + chunk], dtype=np.float32))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        scores, positions = self.index.search(q, k, params=self.search_parameters(k))
        return order_by_score_then_position(scores, positions.astype(np.int64))

    def save(self, directory: Path) -> None:
        _faiss().write_index(self.index, str(directory / FAISS_FILE))

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        path = directory / FAISS_FILE
        if not path.is_file():
            raise CirlabError(f"index {directory} ({self.kind}) lacks {FAISS_FILE}; rebuild it with `cirlab index`")
        try:
            self.index = _faiss().read_index(str(path))
        except RuntimeError as exc:  # FAISS reports damaged files as RuntimeError
            raise CirlabError(f"cannot read {path} (damaged?): {str(exc).splitlines()[0]}") from None
        if self.index.d != self.dim or self.index.ntotal != len(vectors):
            raise CirlabError(f"{path} holds {self.index.ntotal} x {self.index.d} vectors but the index lists "
                              f"{len(vectors)} x {self.dim}; rebuild it with `cirlab index`")


@SEARCHERS.register("hnsw")
class HNSWSearcher(FaissSearcher):
    """FAISS HNSW over full float vectors: sub-millisecond to a few ms per query up to millions of images.

    Params: `m` (graph degree, 32), `ef_construction` (80), `ef_search` (breadth of a query, 128; raised
    to k when k is larger). bench/index_bench.py measures the recall/latency trade-off of `ef_search`.
    """

    kind = "hnsw"
    needs_vectors_in_memory = False
    param_names = ("m", "ef_construction", "ef_search")
    defaults: ClassVar[dict[str, int]] = {"m": 32, "ef_construction": 80, "ef_search": 128}

    def __init__(self, dim: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(dim, {**self.defaults, **(params or {})})

    def make_index(self, vectors: np.ndarray) -> Any:
        faiss = _faiss()
        index = faiss.IndexHNSWFlat(self.dim, int(self.params["m"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(self.params["ef_construction"])
        return index

    def search_parameters(self, k: int) -> Any:
        return _faiss().SearchParametersHNSW(efSearch=max(int(self.params["ef_search"]), k))


@SEARCHERS.register("ivfpq")
class IVFPQSearcher(FaissSearcher):
    """FAISS IVF-PQ with 4-bit fast-scan codes (`dim / 16` bytes per image by default) and exact re-ranking.

    The `rerank` x k best candidates by PQ score are re-scored with the stored float vectors (memory-mapped,
    so only those rows are read), so the PQ only has to shortlist; the re-scored candidates are ordered by
    score, then position. Which tied candidates make the shortlist is FAISS's choice, so with many equal
    scores a larger k may still surface different ones (exact search has no such caveat). Fast-scan codes
    train in seconds where 8-bit PQ training took minutes on a 2-core CPU (bench/index_bench.py). Params:
    `nlist` (coarse cells, default about sqrt(N), a power of two), `pq_m` (sub-quantisers, default dim / 8),
    `nprobe` (cells visited per query, 32), `rerank` (30), `train_size` (vectors the k-means sees, default
    64 x nlist; FAISS needs at least 39 x nlist). Images added later are encoded with the cells and codebooks
    trained at build time; rebuild the index from scratch (`cirlab index` without `--add`) after the gallery
    has grown a lot.
    """

    kind = "ivfpq"
    needs_vectors_in_memory = False
    param_names = ("nlist", "pq_m", "nprobe", "rerank", "train_size")
    defaults: ClassVar[dict[str, int]] = {"nprobe": 32, "rerank": 30}

    def __init__(self, dim: int, params: dict[str, Any] | None = None) -> None:
        super().__init__(dim, {**self.defaults, **(params or {})})
        self._vectors: np.ndarray | None = None

    def make_index(self, vectors: np.ndarray) -> Any:
        faiss = _faiss()
        n = len(vectors)
        nlist = int(self.params.get("nlist") or 2 ** max(4, round(math.log2(math.sqrt(max(n, 1))))))
        pq_m = int(self.params.get("pq_m") or _largest_divisor_at_most(self.dim, max(1, self.dim // 8)))
        if n < 39 * nlist:
            raise CirlabError(f"ivfpq needs at least {39 * nlist} images to train {nlist} cells (got {n}); "
                              f"use --kind exact or hnsw")
        self.params.update(nlist=nlist, pq_m=pq_m)
        index = faiss.index_factory(self.dim, f"IVF{nlist},PQ{pq_m}x4fs", faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        train_size = int(self.params.get("train_size") or 64 * nlist)
        sample = np.sort(rng.choice(n, size=min(n, max(train_size, 39 * nlist)), replace=False))
        index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        self._vectors = vectors
        return index

    def add(self, vectors: np.ndarray, all_vectors: np.ndarray) -> None:
        super().add(vectors, all_vectors)
        self._vectors = all_vectors

    def load(self, directory: Path, vectors: np.ndarray) -> None:
        super().load(directory, vectors)
        self._vectors = vectors

    def search_parameters(self, k: int) -> Any:
        return _faiss().SearchParametersIVF(nprobe=int(self.params["nprobe"]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        _, candidates = super().search(q, k * int(self.params["rerank"]))
        scores = np.full((len(q), k), -np.inf, dtype=np.float32)
        positions = np.full((len(q), k), -1, dtype=np.int64)
        for row, cand in enumerate(candidates):
            cand = np.sort(cand[cand >= 0])
            exact = np.asarray(self._vectors[cand], dtype=np.float32) @ q[row]
            order = np.lexsort((cand, -exact.astype(np.float64)))[:k]
            scores[row, :len(order)] = exact[order]
            positions[row, :len(order)] = cand[order]
        return scores, positions


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if n % d == 0)


def make_searcher(kind: str, dim: int, params: dict[str, Any] | None = None, source: str = "--param {key}"
                  ) -> Searcher:
    """An unbuilt searcher of a registered kind (params override the kind's defaults); `source` names where
    a bad parameter came from in the error (`{key}` is replaced by its name)."""
    cls = SEARCHERS.get(kind)
    problem = cls.param_problem(dict(params or {}))
    if problem is not None:
        raise CirlabError(f"{source.format(key=problem[0])} {problem[1]}")
    return cls(dim, params)
