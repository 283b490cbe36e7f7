"""Index directories: encode a gallery once, search it many times, grow it without re-encoding.

Layout of INDEX_DIR:
  index.json   format, the run (or model folder) it was encoded with: its path relative to INDEX_DIR and its
               absolute path, the SHA-256 of its weights; kind and parameters
  items.json   [[id, image path], ...] in vector order; paths inside the folder that holds INDEX_DIR are stored
               relative to INDEX_DIR, so that moving that folder (say runs/demo with its run, data and index)
               keeps the index working
  vectors.npy  (N, D) float32, L2-normalised: the source of truth (plain .npy, read without pickle)
  faiss.index  the FAISS structure, for the FAISS kinds

Every write goes to a hidden sibling directory that replaces INDEX_DIR only once complete, so a crash (or
Ctrl-C) mid-way leaves the previous index as it was; a later run removes such a directory when a process that
was killed outright (SIGKILL, power loss) left it behind. Opening an index checks every field of index.json
and items.json and every row of vectors.npy (finite, unit norm), so a damaged index is refused with one line
naming the file and the field or row instead of being served.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cirlab import __version__
from cirlab.index.gallery import GalleryItem, GallerySource, is_valid_id, unique_ids
from cirlab.index.searchers import SEARCHERS, Searcher, choose_kind, make_searcher
from cirlab.inference import Pipeline, embed_batches
from cirlab.models.folder import WEIGHTS_FILE
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json, replace_dir_atomic, write_json_atomic

INDEX_FILE = "index.json"
ITEMS_FILE = "items.json"
VECTORS_FILE = "vectors.npy"
FORMAT = "cirlab-index"
FORMAT_VERSION = 1
#: Written first into a temporary index directory (and removed before the swap): pid and host of its writer.
TMP_MARKER = ".cirlab-index-tmp.json"
#: How far from 1 the norm of a stored vector may be (float32 round-off is about 1e-6).
NORM_TOLERANCE = 1e-3


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
                 searcher: Searcher, stamp: tuple[int, ...] | None = None) -> None:
        self.directory = directory
        self.meta = meta
        self.items = items
        self.vectors = vectors
        self.searcher = searcher
        #: `index_stamp` of the directory when it was opened: a changed stamp means it was rewritten since.
        self.stamp = stamp
        self._position = {item.id: i for i, item in enumerate(items)}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def run_dir(self) -> Path:
        """The run the index points to: the first of `run_candidates` that exists (else the first)."""
        candidates = self.run_candidates()
        return next((c for c in candidates if c.is_dir()), candidates[0])

    def run_candidates(self) -> list[Path]:
        """Where the run may be: its path relative to the index directory (valid when both moved together),
        then its absolute path when the index was built (valid when only the index moved)."""
        run = self.meta["run"]
        paths = [stored_path(run["dir"], self.directory)]
        if run.get("dir_absolute"):
            paths.append(Path(run["dir_absolute"]))
        return list(dict.fromkeys(paths))

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

    def search(self, queries: np.ndarray, k: int | Sequence[int], exclude: Sequence[int | None] | None = None
               ) -> list[list[tuple[int, float]]]:
        """Per query, up to k (position, score) pairs, best first; `k` may differ per query; `exclude[q]` drops
        one position.

        A query's results are the same whether it is searched alone or in a batch: each query fetches its own
        k (+1 when it excludes a position); approximate searchers are called once per distinct fetch size.
        """
        ks = [k] * len(queries) if isinstance(k, int) else list(k)
        skips = list(exclude) if exclude is not None else [None] * len(queries)
        fetch = [min(kq + (skip is not None), len(self)) for kq, skip in zip(ks, skips, strict=True)]
        out: list[list[tuple[int, float]]] = [[] for _ in range(len(queries))]
        groups: dict[int, list[int]] = {}
        for q, f in enumerate(fetch):
            if f > 0:
                groups.setdefault(max(fetch) if self.searcher.prefix_stable else f, []).append(q)
        for size, rows in groups.items():
            scores, positions = self.searcher.search(np.asarray(queries)[rows], size)
            for row, q in enumerate(rows):
                pairs = zip(positions[row, :fetch[q]], scores[row, :fetch[q]], strict=True)
                out[q] = [(int(p), float(s)) for p, s in pairs if p >= 0 and p != skips[q]][:ks[q]]
        return out

    @classmethod
    def open(cls, directory: str | Path) -> GalleryIndex:
        """Open and check an index directory: every index.json field, every items.json entry, every vector."""
        directory = Path(directory)
        if not directory.is_dir():
            leftover = directory.with_name(f".{directory.name}.old")
            hint = f" (an interrupted update left the previous index at {leftover})" if leftover.is_dir() else ""
            raise CirlabError(f"index directory not found: {directory}{hint}")
        stamp = index_stamp(directory)
        meta = check_meta(read_json(directory / INDEX_FILE, "index file"), directory / INDEX_FILE)
        items = [GalleryItem(it.id, str(stored_path(it.path, directory))) for it in
                 check_items(read_json(directory / ITEMS_FILE, "index items file"), directory / ITEMS_FILE)]
        if meta["count"] != len(items):
            raise CirlabError(f"{directory / INDEX_FILE}: field 'count' is {meta['count']} but {ITEMS_FILE} lists "
                              f"{len(items)} images; rebuild it with `cirlab index`")
        vectors = _load_vectors(directory / VECTORS_FILE)
        if vectors.shape != (len(items), meta["dim"]):
            raise CirlabError(f"{directory / VECTORS_FILE} holds {vectors.shape} vectors but the index lists "
                              f"{len(items)} x {meta['dim']}; rebuild it with `cirlab index`")
        check_vectors(vectors, directory / VECTORS_FILE)
        searcher = make_searcher(meta["kind"], meta["dim"], meta["params"],
                                 source=f"{directory / INDEX_FILE}: field 'params.{{key}}'")
        searcher.load(directory, vectors)
        return cls(directory, meta, items, vectors, searcher, stamp)


def index_stamp(directory: Path) -> tuple[int, ...] | None:
    """Identity of the index.json in `directory` (inode, size, mtime), None when there is none: every write of
    an index replaces the whole directory, so a changed stamp means a new index."""
    try:
        st = (Path(directory) / INDEX_FILE).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


#: index.json: field -> (accepted types, required, what the value must be). Nested fields use a dot.
_META_FIELDS: dict[str, tuple[tuple[type, ...], bool, str]] = {
    "format": ((str,), True, "a string"),
    "version": ((int,), True, "an integer"),
    "cirlab_version": ((str,), False, "a string"),
    "run": ((dict,), True, "an object (the run the index was encoded with)"),
    "run.dir": ((str,), True, "a path string"),
    "run.dir_absolute": ((str,), False, "a path string"),
    "run.weights_sha256": ((str,), True, "a SHA-256 hex digest"),
    "run.model": ((str,), False, "a string"),
    "run.dataset": ((str,), False, "a string"),
    "dim": ((int,), True, "a positive integer"),
    "count": ((int,), True, "a non-negative integer"),
    "kind": ((str,), True, "an index kind"),
    "requested_kind": ((str,), False, "a string"),
    "params": ((dict,), True, "an object"),
    "sources": ((list,), False, "a list of objects"),
    "created": ((str,), False, "a date string"),
    "updated": ((str,), False, "a date string"),
}


def check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """index.json checked field by field (types and ranges); the error names the file and the field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CirlabError(f"{path} is not a cirlab index (build one with `cirlab index`)")
    for name, (types, required, what) in _META_FIELDS.items():
        parent, _, key = name.rpartition(".")
        holder = meta.get(parent) if parent else meta
        if key not in holder:
            if required:
                raise CirlabError(f"{path}: field {name!r} is missing; rebuild the index with `cirlab index`")
            continue
        value = holder[key]
        valid = isinstance(value, types) and not isinstance(value, bool)
        if valid and name == "dim":
            valid = value > 0
        elif valid and name == "count":
            valid = value >= 0
        elif valid and name == "run.weights_sha256":
            valid = re.fullmatch(r"[0-9a-f]{64}", value) is not None
        elif valid and name == "sources":
            valid = all(isinstance(x, dict) for x in value)
        elif valid and name == "kind":
            valid = value in SEARCHERS
        if not valid:
            raise CirlabError(f"{path}: field {name!r} must be {what}, got {_describe(value)}")
    if meta["version"] != FORMAT_VERSION:
        raise CirlabError(f"{path}: unsupported index version {meta['version']!r}")
    return meta


def check_items(raw: Any, path: Path) -> list[GalleryItem]:
    """items.json as gallery items: [id, path] string pairs with valid, unique ids."""
    if not isinstance(raw, list):
        raise CirlabError(f"{path}: expected a list of [id, path] pairs")
    items, seen = [], set()
    for n, entry in enumerate(raw):
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)):
            raise CirlabError(f"{path}: entry {n} must be an [id, path] pair of strings, got {_describe(entry)}")
        if not is_valid_id(entry[0]):
            raise CirlabError(f"{path}: entry {n}: {_describe(entry[0])} is not a valid gallery id")
        if entry[0] in seen:
            raise CirlabError(f"{path}: entry {n}: duplicate id {entry[0]!r}")
        seen.add(entry[0])
        items.append(GalleryItem(entry[0], entry[1]))
    return items


def check_vectors(vectors: np.ndarray, path: Path, chunk: int = 65_536) -> None:
    """Every row finite and of unit norm (within NORM_TOLERANCE), read chunk by chunk from the memory map."""
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk])
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            raise CirlabError(f"{path} row {start + int(np.argmin(finite))} is not finite (NaN or infinity): "
                              f"the index is damaged; rebuild it with `cirlab index`")
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        bad = np.abs(norms - 1.0) > NORM_TOLERANCE
        if bad.any():
            row = int(np.argmax(bad))
            raise CirlabError(f"{path} row {start + row} has norm {norms[row]:.6g}, not 1 (the vectors are "
                              f"L2-normalised embeddings): the index is damaged; rebuild it with `cirlab index`")


def _load_vectors(path: Path) -> np.ndarray:
    """vectors.npy memory-mapped, never unpickled."""
    if not path.is_file():
        raise CirlabError(f"index vectors not found: {path}")
    if path.stat().st_size == 0:
        raise CirlabError(f"cannot read index vectors {path}: the file is empty")
    try:
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CirlabError(f"cannot read index vectors {path}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
                          ) from None
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
    #: Temporary directories of killed earlier runs that this run removed.
    removed_stale: list[Path] = field(default_factory=list)


def encode_into(pipe: Pipeline, source: GallerySource, out: np.ndarray, batch_size: int, progress: bool) -> None:
    """Write the gallery vector of every source image into the rows of `out` (`embed_batches`, block by block)."""
    device, transform = pipe.device, pipe.transform
    pipe.model.eval()
    embed_batches(
        len(source), lambda rows: pipe.model.embed_target(
            torch.stack([transform(source.load(r)) for r in rows]).to(device)),
        pipe.embed_dim, batch_size=batch_size, device=device, precision=pipe.precision, out=out, progress=progress,
        desc="encoding gallery", describe=lambda r: source.items[r].path)


def relative_path(path: str | Path, index_dir: Path, within: Path | None = None) -> str:
    """`path` as index.json/items.json store it: relative to `index_dir` when it lies under `within` (default:
    anywhere), else absolute."""
    path, base = Path(os.path.abspath(path)), os.path.abspath(index_dir)
    if within is not None and not path.is_relative_to(os.path.abspath(within)):
        return str(path)
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive (Windows): no relative path exists
        return str(path)


def stored_path(value: str, index_dir: Path) -> Path:
    """A path read from index.json/items.json: relative ones are relative to the index directory."""
    path = Path(value)
    return path if path.is_absolute() else Path(os.path.abspath(Path(index_dir) / path))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(out_dir: Path) -> list[Path]:
    """Remove the temporary directories that killed runs writing `out_dir` left behind; only those that are
    clearly ours (named `.NAME.tmp-PID-HEX`, holding our marker with that pid and this host, and nothing but
    index files) and stale (that process is gone). Anything else, however named, is left alone."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.tmp-(\d+)-[0-9a-f]{{8}}")
    ours = {INDEX_FILE, ITEMS_FILE, VECTORS_FILE, TMP_MARKER, "faiss.index"}
    partial = re.compile(r"\.(index|items)\.json\.[A-Za-z0-9_]+\.tmp")  # cirlab.utils.io.atomic_path leftovers
    removed = []
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return removed
    for path in siblings:
        match = pattern.fullmatch(path.name)
        if not match or path.is_symlink() or not path.is_dir():
            continue
        pid = int(match.group(1))
        try:
            marker = json.loads((path / TMP_MARKER).read_text(encoding="utf-8"))
            names = [child.name for child in path.iterdir()]
        except (OSError, ValueError):
            continue
        if marker != {"pid": pid, "host": socket.gethostname()} or _pid_alive(pid):
            continue
        if all(name in ours or partial.fullmatch(name) for name in names):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def build_index(pipe: Pipeline, source: GallerySource, out_dir: str | Path, kind: str = "auto",
                params: dict[str, Any] | None = None, add: bool = False, batch_size: int = 64,
                progress: bool = True) -> IndexSummary:
    """Encode `source` with `pipe` (loaded from a run directory or model folder) into `out_dir`; with `add`,
    append only its images that are not indexed yet.

    On `add` the existing vectors are copied, not re-encoded, and the FAISS structure is extended in place
    unless the kind changes (by `kind` or because "auto" now picks another), when it is rebuilt from the vectors.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    if batch_size < 1:
        raise CirlabError("--batch-size must be >= 1")
    if pipe.directory is None:
        raise CirlabError("an index points to the model that encoded it: load the pipeline from its folder "
                          "(cirlab.load) or save it first (Pipeline.save_pretrained)")
    fingerprint = weights_fingerprint(pipe.directory)
    removed_stale = remove_stale_temporaries(out_dir)
    old = _previous_index(out_dir, add, pipe, fingerprint)
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
    dim = pipe.embed_dim
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        (tmp / TMP_MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}),
                                      encoding="utf-8")
        vectors = np.lib.format.open_memmap(tmp / VECTORS_FILE, mode="w+", dtype=np.float32, shape=(total, dim))
        start = 0
        if old is not None:
            start = len(old)
            for s in range(0, start, 65_536):
                stop = min(start, s + 65_536)
                vectors[s:stop] = old.vectors[s:stop]
        encode_into(pipe, source, vectors[start:], batch_size, progress)
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
        write_json_atomic(tmp / ITEMS_FILE, [[it.id, relative_path(it.path, out_dir, within=out_dir.parent)]
                                             for it in items])
        sources = (old.meta.get("sources", []) if old is not None else []) + ([source.description] if len(source)
                                                                             else [])
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write_json_atomic(tmp / INDEX_FILE, {
            "format": FORMAT, "version": FORMAT_VERSION, "cirlab_version": __version__,
            "run": {"dir": relative_path(pipe.directory, out_dir), "dir_absolute": os.path.abspath(pipe.directory),
                    "weights_sha256": fingerprint, "model": pipe.model.config.name,
                    **({"dataset": pipe.run.dataset} if pipe.run is not None else {})},
            "dim": dim, "count": total, "kind": chosen, "requested_kind": requested, "params": searcher.params,
            "sources": sources, "created": old.meta.get("created", now) if old is not None else now, "updated": now,
        })
        del vectors
        (tmp / TMP_MARKER).unlink()
        replace_dir_atomic(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return IndexSummary(out_dir, total, len(source), skipped, chosen, time.perf_counter() - started, removed_stale)


def _previous_index(out_dir: Path, add: bool, pipe: Pipeline, fingerprint: str) -> GalleryIndex | None:
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
    if old.meta["run"]["weights_sha256"] != fingerprint or old.meta["dim"] != pipe.embed_dim:
        raise CirlabError(f"--add: {out_dir} was encoded with other weights ({old.run_dir}); "
                          f"adding images encoded by {pipe.directory} would mix two embedding spaces")
    return old
