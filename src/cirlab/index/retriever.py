"""Composed retrieval over an index: a reference image + a text -> ranked gallery ids (CLI and server share it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cirlab.datasets.base import load_rgb
from cirlab.index.store import GalleryIndex, index_stamp, weights_fingerprint
from cirlab.training import LoadedRun, load_run
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
    """A trained run and the index it encoded, loaded once: `search` composes and ranks in one batch.

    `refresh` re-opens the index when its directory was rewritten (`cirlab index --add`, or a rebuild with the
    same weights); every method reads `self.index` once, so a search never mixes two versions.
    """

    def __init__(self, run: LoadedRun, index: GalleryIndex) -> None:
        self.run = run
        self.index = index

    @classmethod
    def open(cls, index_dir: str | Path, run_dir: str | Path | None = None) -> Retriever:
        """Open an index and the run it points to (or `run_dir`, which must hold the same weights)."""
        index = GalleryIndex.open(index_dir)
        run_dir = Path(run_dir) if run_dir is not None else index.run_dir
        if not run_dir.is_dir():
            raise CirlabError(f"index {index_dir} points to run {run_dir}, which does not exist (moved? pass --run)")
        if weights_fingerprint(run_dir) != index.meta["run"]["weights_sha256"]:
            raise CirlabError(f"{run_dir} holds other weights than the ones index {index_dir} was encoded with "
                              f"(retrained since?); rebuild the index with `cirlab index`")
        return cls(load_run(run_dir), index)

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
                              f"({fresh.meta['run']['dir']}); restart the server to serve it")
        self.index = fresh
        return True

    def reference_image(self, item_id: str) -> Image.Image:
        """The pixels of a gallery image, read from the path the index stores for `item_id`."""
        return load_rgb(self.index.item(item_id).path)

    def query_for_id(self, item_id: str, text: str) -> ComposedQuery:
        return ComposedQuery(self.reference_image(item_id), text, item_id)

    def compose(self, queries: list[ComposedQuery]) -> np.ndarray:
        return self.run.compose([q.image for q in queries], [q.text for q in queries]).float().cpu().numpy()

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
