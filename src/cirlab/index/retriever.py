"""Composed retrieval over an index: a reference image + a text -> ranked gallery ids (CLI and server share it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cirlab.datasets.base import load_rgb
from cirlab.index.store import GalleryIndex, index_stamp, weights_fingerprint
from cirlab.inference import Pipeline, load
from cirlab.utils.errors import CirlabError


@dataclass(frozen=True)
class Hit:
    """One ranked result."""

    rank: int
    id: str
    path: str
    score: float


@dataclass
class ComposedQuery:
    """One composed query: a reference image, the change in words, and optionally the gallery id it came from."""

    image: Image.Image
    text: str
    reference_id: str | None = None


class Retriever:
    """A model (`Pipeline`) and the index it encoded, loaded once: `search` composes and ranks in one batch.

    `refresh` re-opens the index when its directory was rewritten (`cirlab index --add`, or a rebuild with the
    same weights); every method reads `self.index` once, so a search never mixes two versions.
    """

    def __init__(self, pipeline: Pipeline, index: GalleryIndex) -> None:
        self.pipeline = pipeline
        self.index = index

    @classmethod
    def open(cls, index_dir: str | Path, run_dir: str | Path | None = None, device: str = "cpu") -> Retriever:
        """Open an index and the run it points to (or `run_dir`, which must hold the same weights), the model on
        `device`. The index names its run relative to itself and absolutely: the first that holds the same
        weights is used, so moving the run and the index together, or the index alone, keeps working."""
        index = GalleryIndex.open(index_dir)
        wanted = index.meta["run"]["weights_sha256"]
        candidates = [Path(run_dir)] if run_dir is not None else index.run_candidates()
        existing = [c for c in candidates if c.is_dir()]
        if not existing:
            raise CirlabError(f"index {index_dir} points to run {candidates[0]}, which does not exist "
                              f"(moved? pass --run)")
        matching = next((c for c in existing if weights_fingerprint(c) == wanted), None)
        if matching is None:
            raise CirlabError(f"{existing[0]} holds other weights than the ones index {index_dir} was encoded with "
                              f"(retrained since?); rebuild the index with `cirlab index`")
        return cls(load(matching, device=device), index)

    def refresh(self) -> bool:
        """Switch to the index now in the directory if it was rewritten since it was opened (True when it was).

        The new index is fully opened and checked first, and must come from the same weights; a CirlabError
        (damaged, other weights, or caught mid-swap) leaves the current index in place.
        """
        current = self.index
        stamp = index_stamp(current.directory)
        if stamp is None or stamp == current.stamp:
            return False
        fresh = GalleryIndex.open(current.directory)
        if fresh.meta["run"]["weights_sha256"] != current.meta["run"]["weights_sha256"]:
            raise CirlabError(f"index {current.directory} was rebuilt with other weights "
                              f"({fresh.run_dir}); restart the server to serve it")
        self.index = fresh
        return True

    def reference_image(self, item_id: str) -> Image.Image:
        """The pixels of a gallery image, read from the path the index stores for `item_id`."""
        return load_rgb(self.index.item(item_id).path)

    def query_for_id(self, item_id: str, text: str) -> ComposedQuery:
        return ComposedQuery(self.reference_image(item_id), text, item_id)

    def compose(self, queries: list[ComposedQuery]) -> np.ndarray:
        return self.pipeline.compose([q.image for q in queries], [q.text for q in queries]).cpu().numpy()

    def search(self, queries: list[ComposedQuery], k: int | Sequence[int]) -> list[list[Hit]]:
        """Top-k gallery images for each query (`k` one for all, or one per query); a gallery reference never
        ranks as its own result. Ties rank by gallery position, so a query's results depend only on itself and
        its k, not on the batch it was searched in."""
        if not queries:
            return []
        index = self.index
        vectors = self.compose(queries)
        exclude = [index.position(q.reference_id) if q.reference_id else None for q in queries]
        ranked = index.search(vectors, k, exclude)
        items = index.items
        return [[Hit(r + 1, items[p].id, items[p].path, s) for r, (p, s) in enumerate(hits)] for hits in ranked]
