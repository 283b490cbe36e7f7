"""Index directories: encode a gallery once, search it many times, grow it without re-encoding.

Layout of INDEX_DIR:
  index.json   format, the run it was encoded with (path + SHA-256 of its weights), kind and parameters
  items.json   [[id, image path], ...] in vector order
  vectors.npy  (N, D) float32, L2-normalised: the source of truth (plain .npy, read without pickle)
  faiss.index  the FAISS structure, for the FAISS kinds

Every write goes to a hidden sibling directory that replaces INDEX_DIR only once complete, so a crash (or
Ctrl-C) mid-way leaves the previous index as it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cirlab import __version__
from cirlab.index.gallery import GalleryItem, GallerySource, is_valid_id, unique_ids
from cirlab.index.searchers import Searcher, choose_kind, make_searcher
from cirlab.training import LoadedRun
from cirlab.training.run_dir import WEIGHTS_FILE
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json, replace_dir_atomic, write_json_atomic

INDEX_FILE = "index.json"
ITEMS_FILE = "items.json"
VECTORS_FILE = "vectors.npy"
FORMAT = "cirlab-index"
FORMAT_VERSION = 1


def weights_fingerprint(run_dir: str | Path) -> str:
    """SHA-256 of a run's weights: ties an index to the exact model that encoded it."""
    path = Path(run_dir) / WEIGHTS_FILE
    if not path.is_file():
        raise CirlabError(f"weights file not found: {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class GalleryIndex:
    """An opened index directory: items, vectors (memory-mapped) and a ready searcher."""

    def __init__(self, directory: Path, meta: dict[str, Any], items: list[GalleryItem], vectors: np.ndarray,
                 searcher: Searcher) -> None:
        self.directory = directory
        self.meta = meta
        self.items = items
        self.vectors = vectors
        self.searcher = searcher
        self._position = {item.id: i for i, item in enumerate(items)}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def run_dir(self) -> Path:
        return Path(self.meta["run"]["dir"])

    @property
    def kind(self) -> str:
        return str(self.meta["kind"])

    def position(self, item_id: str) -> int | None:
        """Row of `item_id`, or None when it is not in the gallery (ids are never turned into paths)."""
        return self._position.get(item_id) if is_valid_id(item_id) else None

    def item(self, item_id: str) -> GalleryItem:
        pos = self.position(item_id)
        if pos is None:
            raise CirlabError(f"no image with id {item_id!r} in index {self.directory}")
        return self.items[pos]

    def search(self, queries: np.ndarray, k: int, exclude: list[int | None] | None = None
               ) -> list[list[tuple[int, float]]]:
        """Per query, up to k (position, score) pairs, best first; `exclude[q]` drops one position."""
        extra = 1 if exclude and any(e is not None for e in exclude) else 0
        scores, positions = self.searcher.search(queries, min(k + extra, max(len(self), 1)))
        out = []
        for q in range(len(queries)):
            skip = exclude[q] if exclude else None
            hits = [(int(p), float(s)) for p, s in zip(positions[q], scores[q], strict=True) if p >= 0 and p != skip]
            out.append(hits[:k])
        return out

    @classmethod
    def open(cls, directory: str | Path) -> GalleryIndex:
        directory = Path(directory)
        if not directory.is_dir():
            leftover = directory.with_name(f".{directory.name}.old")
            hint = f" (an interrupted update left the previous index at {leftover})" if leftover.is_dir() else ""
            raise CirlabError(f"index directory not found: {directory}{hint}")
        meta = read_json(directory / INDEX_FILE, "index file")
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CirlabError(f"{directory / INDEX_FILE} is not a cirlab index (build one with `cirlab index`)")
        if meta.get("version") != FORMAT_VERSION:
            raise CirlabError(f"{directory / INDEX_FILE}: unsupported index version {meta.get('version')!r}")
        raw = read_json(directory / ITEMS_FILE, "index items file")
        try:
            items = [GalleryItem(str(i), str(p)) for i, p in raw]
        except (TypeError, ValueError):
            raise CirlabError(f"{directory / ITEMS_FILE}: expected a list of [id, path] pairs") from None
        vectors = _load_vectors(directory / VECTORS_FILE)
        if vectors.shape != (len(items), int(meta["dim"])):
            raise CirlabError(f"{directory / VECTORS_FILE} holds {vectors.shape} vectors but the index lists "
                              f"{len(items)} x {meta['dim']}; rebuild it with `cirlab index`")
        searcher = make_searcher(meta["kind"], int(meta["dim"]), meta.get("params"))
        searcher.load(directory, vectors)
        return cls(directory, meta, items, vectors, searcher)


def _load_vectors(path: Path) -> np.ndarray:
    if not path.is_file():
        raise CirlabError(f"index vectors not found: {path}")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise CirlabError(f"cannot read index vectors {path}: {exc}") from None
    if vectors.ndim != 2 or vectors.dtype != np.float32:
        raise CirlabError(f"{path}: expected a 2-D float32 array, got {vectors.dtype} {vectors.shape}")
    return vectors


@dataclass
class IndexSummary:
    """What `build_index` did, for the CLI to print."""

    directory: Path
    count: int
    added: int
    skipped: int
    kind: str
    seconds: float


def encode_into(run: LoadedRun, source: GallerySource, out: np.ndarray, batch_size: int, progress: bool) -> None:
    """Write the L2-normalised target embedding of every source image into the rows of `out`."""
    with tqdm(total=len(source), desc="encoding gallery", unit="img", disable=not progress) as bar:
        for start in range(0, len(source), batch_size):
            stop = min(len(source), start + batch_size)
            images = [source.load(i) for i in range(start, stop)]
            out[start:stop] = run.embed_images(images).float().cpu().numpy()
            bar.update(stop - start)


def build_index(run: LoadedRun, source: GallerySource, out_dir: str | Path, kind: str = "auto",
                params: dict[str, Any] | None = None, add: bool = False, batch_size: int = 64,
                progress: bool = True) -> IndexSummary:
    """Encode `source` with `run` into `out_dir`; with `add`, append only its images that are not indexed yet.

    On `add` the existing vectors are copied, not re-encoded, and the FAISS structure is extended in place
    unless the kind changes (by `kind` or because "auto" now picks another), when it is rebuilt from the vectors.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if batch_size < 1:
        raise CirlabError("--batch-size must be >= 1")
    fingerprint = weights_fingerprint(run.run_dir)
    old = _previous_index(out_dir, add, run, fingerprint)
    skipped = 0
    if old is not None:
        known = {item.path for item in old.items}
        keep = [i for i, item in enumerate(source.items) if item.path not in known]
        skipped = len(source) - len(keep)
        source = source.subset(keep)
        source = source.with_ids(unique_ids((it.id for it in source.items), {it.id for it in old.items}))
    requested = kind if old is None or kind != "auto" else old.meta.get("requested_kind", "auto")
    total = len(source) + (len(old) if old is not None else 0)
    chosen = choose_kind(total, requested)
    dim = run.model.embed_dim
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        vectors = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(total, dim))
        start = 0
        if old is not None:
            start = len(old)
            for s in range(0, start, 65_536):
                stop = min(start, s + 65_536)
                vectors[s:stop] = old.vectors[s:stop]
        encode_into(run, source, vectors[start:], batch_size, progress)
        vectors.flush()
        merged_params = {**(old.meta.get("params", {}) if old is not None and old.kind == chosen else {}),
                         **(params or {})}
        if old is not None and old.kind == chosen and not params:
            searcher = old.searcher
            searcher.add(vectors[start:], vectors)
        else:
            searcher = make_searcher(chosen, dim, merged_params)
            searcher.build(vectors)
        searcher.save(tmp)
        items = (old.items if old is not None else []) + source.items
        write_json_atomic(tmp / ITEMS_FILE, [[it.id, it.path] for it in items])
        sources = (old.meta.get("sources", []) if old is not None else []) + ([source.description] if len(source)
                                                                             else [])
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(tmp / INDEX_FILE, {
            "format": FORMAT, "version": FORMAT_VERSION, "cirlab_version": __version__,
            "run": {"dir": str(run.run_dir.resolve()), "weights_sha256": fingerprint,
                    "model": run.config.model.name, "dataset": run.config.dataset},
            "dim": dim, "count": total, "kind": chosen, "requested_kind": requested, "params": searcher.params,
            "sources": sources, "created": old.meta.get("created", now) if old is not None else now, "updated": now,
        })
        del vectors
        replace_dir_atomic(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return IndexSummary(out_dir, total, len(source), skipped, chosen, time.perf_counter() - started)


def _previous_index(out_dir: Path, add: bool, run: LoadedRun, fingerprint: str) -> GalleryIndex | None:
    """The index that `add` extends (checked to come from the same weights), or None for a fresh build."""
    if not out_dir.exists():
        if add:
            raise CirlabError(f"--add: no index at {out_dir} to add to (drop --add to build one)")
        return None
    if not (out_dir / INDEX_FILE).is_file():
        if out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()
            return None
        raise CirlabError(f"--out {out_dir} exists and is not a cirlab index; refusing to replace it")
    if not add:
        return None
    old = GalleryIndex.open(out_dir)
    if old.meta["run"]["weights_sha256"] != fingerprint or old.meta["dim"] != run.model.embed_dim:
        raise CirlabError(f"--add: {out_dir} was encoded with other weights ({old.meta['run']['dir']}); "
                          f"adding images encoded by {run.run_dir} would mix two embedding spaces")
    return old
