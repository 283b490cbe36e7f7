"""Nearest-neighbour search over L2-normalised vectors: exact (torch) or FAISS (HNSW, IVF-PQ).

Every searcher ranks by inner product, which is cosine similarity on normalised vectors. The stored
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

from cirlab.evaluation.recall import topk_chunked
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

    def __init__(self, dim: int, params: dict[str, Any] | None = None) -> None:
        self.dim = dim
        self.params = dict(params or {})

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
        if len(self._gallery):
            top_scores, top_positions = topk_chunked(q, self._gallery, k)
            found = top_scores.shape[1]
            scores[:, :found], positions[:, :found] = top_scores.numpy(), top_positions.numpy()
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
        return scores, positions.astype(np.int64)

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
    so only those rows are read), so the PQ only has to shortlist. Fast-scan codes train in seconds where
    8-bit PQ training took minutes on a 2-core CPU (bench/index_bench.py). Params: `nlist` (coarse cells,
    default about sqrt(N), a power of two), `pq_m` (sub-quantisers, default dim / 8), `nprobe` (cells visited
    per query, 32), `rerank` (30), `train_size` (vectors the k-means sees, default 64 x nlist; FAISS needs at
    least 39 x nlist). Images added later are encoded with the cells and codebooks trained at build time;
    rebuild the index from scratch (`cirlab index` without `--add`) after the gallery has grown a lot.
    """

    kind = "ivfpq"
    needs_vectors_in_memory = False
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
            order = np.argsort(-exact, kind="stable")[:k]
            scores[row, :len(order)] = exact[order]
            positions[row, :len(order)] = cand[order]
        return scores, positions


def _largest_divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, limit + 1) if n % d == 0)


def make_searcher(kind: str, dim: int, params: dict[str, Any] | None = None) -> Searcher:
    """An unbuilt searcher of a registered kind (params override the kind's defaults)."""
    return SEARCHERS.get(kind)(dim, params)
