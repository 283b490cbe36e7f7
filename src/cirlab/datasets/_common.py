"""Shared pieces of the on-disk benchmark loaders: shared options, the missing-image policy, EvalSet assembly.

Real downloads (FashionIQ, CIRR) are rarely complete, so every loader treats missing images the same way:
count them before anything runs; with `skip_missing=True` drop the affected queries, pairs and gallery
images and say how many (once, on stderr); otherwise stop with a CirlabError that lists the first paths.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from cirlab.datasets.base import CIRDataset, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option

MISSING_EXAMPLES = 5

#: The `sampling` option of the datasets whose released loaders pair queries (TIRG's CSS and MIT-States).
Sampling = Literal["paired", "independent"]
SAMPLING_HELP = ("paired: google/tirg's sampler (consecutive queries share a source image); independent: every pair "
                 "on its own (cirlab <= 0.1)")


@dataclass
class ImageListOptions:
    """The option every image-list benchmark has."""

    skip_missing: bool = option(False, "drop the pairs, queries and gallery images whose image files are missing "
                                       "(default: stop with an error listing them)")


def check_split(dataset: str, split: str, allowed: Sequence[str]) -> None:
    if split not in allowed:
        raise CirlabError(f"{dataset} has splits {', '.join(allowed)}, not {split!r}")


def entry_error(path: Path, entry: Any, problem: str) -> CirlabError:
    """The error for one bad record of an annotation file: names the file and the entry."""
    return CirlabError(f"malformed entry {entry} in {path}: {problem}")


def read_text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines of a text file with their 1-based line numbers, errors naming the file."""
    if not path.is_file():
        raise CirlabError(f"{what} not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CirlabError(f"malformed {what} {path}: not UTF-8 text") from None
    return [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def list_images(folder: Path, suffixes: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> dict[str, str]:
    """Map file stem -> file name for the images directly in `folder` (one directory listing, no stat calls)."""
    if not folder.is_dir():
        return {}
    out: dict[str, str] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in suffixes and stem not in out:
                out[stem] = entry.name
    return out


@dataclass
class EvalQuery:
    """One test query before assembly: image indices (not gallery positions) and integer labels."""

    source: int
    text: str
    labels: dict[str, int]
    target: int = -1  # the annotated target image, checked for presence when hits are by identity
    query_id: str | None = None
    candidates: Sequence[int] | None = None  # image indices of a subset-recall group


class ImageListDataset(CIRDataset):
    """A benchmark whose images are a fixed list of files; subclasses fill `paths` and `names`.

    Provides the missing-image policy (`skip_missing` option), cached EvalSets and EvalSet assembly.
    """

    #: Where the loader looks for images, quoted in missing-image errors.
    layout_hint: ClassVar[str] = ""
    Options: ClassVar[type] = ImageListOptions

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        self.skip_missing = self.options.skip_missing
        self.paths: list[Path] = []
        self.names: list[str] = []
        self._missing: np.ndarray | None = None
        self._eval_sets: list[EvalSet] | None = None
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> Path:
        return self.paths[index]

    def image_name(self, index: int) -> str:
        return self.names[index]

    # missing images -----------------------------------------------------------------------------
    def find_missing(self) -> np.ndarray:
        """Boolean mask of images absent on disk (override with a faster directory listing if possible)."""
        return np.array([not os.path.isfile(p) for p in self.paths], dtype=bool)

    def missing_mask(self) -> np.ndarray:
        if self._missing is None:
            self._missing = np.asarray(self.find_missing(), dtype=bool)
        return self._missing

    def missing_examples(self, limit: int = MISSING_EXAMPLES) -> list[str]:
        """The first missing image paths (what `cirlab data stats` shows next to the counts)."""
        return [str(self.paths[i]) for i in np.nonzero(self.missing_mask())[0][:limit]]

    def apply_missing_policy(self, what: str, dropped: int, total: int, missing_images: Sequence[int],
                             gallery_dropped: int = 0) -> None:
        """Raise (default) or report once (skip_missing) that `missing_images` make `dropped` of `total` unusable."""
        if not missing_images:
            return
        where = f"{self.name} {self.split}"
        summary = f"{len(missing_images)} image(s) missing: {dropped} of {total} {what}"
        if gallery_dropped:
            summary += f" and {gallery_dropped} gallery image(s)"
        if not self.skip_missing:
            examples = ", ".join(str(self.paths[i]) for i in missing_images[:MISSING_EXAMPLES])
            hint = f" (expected layout: {self.layout_hint})" if self.layout_hint else ""
            raise CirlabError(f"{where}: {summary} affected; first missing: {examples}{hint}. "
                              "Pass --skip-missing (dataset option skip_missing=true) to drop them")
        key = f"{what}:{summary}"
        if key not in self._reported:
            self._reported.add(key)
            print(f"cirlab: {where}: {summary} dropped (skip_missing)", file=sys.stderr, flush=True)

    def listed_pairs(self) -> list[TrainPair]:
        """The training triplets the annotation files list (Shoes, CIRR). Datasets that compose their pairs
        otherwise (Fashion200k, MIT-States, FashionIQ's caption orderings) override the two methods below."""
        raise NotImplementedError

    def train_texts(self) -> list[str]:
        return [p.text for p in self.listed_pairs()]

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        pairs = self.listed_pairs()
        return [pairs[rng.integers(len(pairs))] for _ in range(n)]

    def epoch_size(self) -> int:
        """The released loaders iterate over the listed triplets."""
        return len(self.listed_pairs())

    def usable_pairs(self, pairs: list[TrainPair]) -> list[TrainPair]:
        """Training pairs whose two images exist, after applying the missing-image policy."""
        missing = self.missing_mask()
        bad = [p for p in pairs if missing[p.source] or missing[p.target]]
        lost = sorted({i for p in bad for i in (p.source, p.target) if missing[i]})
        self.apply_missing_policy("training pairs", len(bad), len(pairs), lost)
        return [p for p in pairs if not (missing[p.source] or missing[p.target])] if bad else pairs

    def usable_images(self, indices: Sequence[int], what: str = "training images") -> list[int]:
        """The subset of `indices` present on disk, after applying the missing-image policy."""
        missing = self.missing_mask()
        lost = [int(i) for i in indices if missing[i]]
        self.apply_missing_policy(what, len(lost), len(indices), lost)
        return [int(i) for i in indices if not missing[i]] if lost else [int(i) for i in indices]

    # evaluation ---------------------------------------------------------------------------------
    def eval_sets(self) -> list[EvalSet]:
        if self._eval_sets is None:
            self._eval_sets = self.build_eval_sets()
        return self._eval_sets

    def build_eval_sets(self) -> list[EvalSet]:
        raise NotImplementedError

    def assemble(self, name: str, queries: list[EvalQuery], gallery: Sequence[int],
                 gallery_labels: dict[str, np.ndarray],
                 *, exclude_source: bool, target_must_exist: bool, ks: tuple[int, ...], protocol: str,
                 subset_ks: tuple[int, ...] = (1, 2, 3)) -> EvalSet:
        """Build an EvalSet from image-indexed queries, applying the missing-image policy first.

        A query is unusable when its reference image (or, if `target_must_exist`, its target) is missing;
        missing gallery images leave the gallery. Exclusions and candidates become gallery positions.
        """
        missing = self.missing_mask()

        def unusable(q: EvalQuery) -> bool:
            return bool(missing[q.source] or (target_must_exist and q.target >= 0 and missing[q.target]))

        bad = [q for q in queries if unusable(q)]
        lost_gallery = [int(g) for g in gallery if missing[g]]
        lost = list(dict.fromkeys([i for q in bad for i in (q.source, q.target) if i >= 0 and missing[i]]
                                  + lost_gallery))
        self.apply_missing_policy(f"{name} queries", len(bad), len(queries), lost, len(lost_gallery))
        keep = np.array([not missing[g] for g in gallery], dtype=bool)
        gallery = [int(g) for g, k in zip(gallery, keep, strict=True) if k]
        g_labels = {kind: np.asarray(v, dtype=np.int64)[keep] for kind, v in gallery_labels.items()}
        queries = [q for q in queries if not unusable(q)]
        if queries and not gallery or bad and not queries:
            where = f"{self.name} {self.split}" + (f" {name}" if name != self.split else "")
            raise CirlabError(f"{where}: no usable queries or gallery images left after "
                              f"dropping missing images (expected layout: {self.layout_hint})")
        position = {img: p for p, img in enumerate(gallery)}
        exclude = np.array([position.get(q.source, -1) if exclude_source else -1 for q in queries], dtype=np.int64)
        candidates = None
        if any(q.candidates is not None for q in queries):
            candidates = [np.array([position[c] for c in (q.candidates or ()) if c in position], dtype=np.int64)
                          for q in queries]
        ids = [q.query_id for q in queries] if all(q.query_id is not None for q in queries) and queries else None
        return EvalSet(
            name=name,
            query_images=[q.source for q in queries],
            query_texts=[q.text for q in queries],
            gallery_images=gallery,
            query_labels={kind: np.array([q.labels[kind] for q in queries], dtype=np.int64) for kind in g_labels},
            gallery_labels=g_labels,
            exclude=exclude,
            ks=ks,
            candidates=candidates,
            subset_ks=subset_ks,
            query_ids=ids,
            protocol=protocol,
        )


def split_stats(*, training_pairs: int = 0, queries: int = 0, gallery: int = 0, images: int = 0,
                missing_images: int = 0, **extra: Any) -> dict[str, Any]:
    """The counts `cirlab data stats` prints for one split (or one category of it)."""
    return {"training_pairs": training_pairs, "queries": queries, "gallery": gallery, "images": images,
            "missing_images": missing_images, **extra}


def sum_stats(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Add up per-category counts (numeric keys only)."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, int) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return total
