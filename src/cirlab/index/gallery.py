"""What goes into an index: gallery items (a stable id + an image path) and where their pixels come from.

Ids are the only handle a user (or an HTTP request) has on a gallery image: they are short, URL-safe
(`ID_PATTERN`) and looked up in the index, never joined onto a path, so no id can reach a file outside the
gallery.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from cirlab.datasets import CIRDataset
from cirlab.datasets.base import load_rgb
from cirlab.utils.errors import CirlabError

#: A gallery id: letters, digits, '.', '_' and '-', at most 128 characters, not starting with '.' or '-'.
ID_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
#: Files `--images DIR` picks up (by suffix, case-insensitive).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"})


@dataclass(frozen=True)
class GalleryItem:
    """One gallery image: its id and the absolute path of its file."""

    id: str
    path: str


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def slug(text: str) -> str:
    """An id-safe version of `text` (runs of other characters become '-')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:120]
    return cleaned if cleaned and is_valid_id(cleaned) else "image"


def unique_ids(wanted: Iterable[str], taken: set[str]) -> list[str]:
    """`wanted` ids made unique against `taken` (and each other) with a numeric suffix; updates `taken`."""
    out = []
    for base in wanted:
        candidate, n = base, 2
        while candidate in taken:
            candidate, n = f"{base}_{n}", n + 1
        taken.add(candidate)
        out.append(candidate)
    return out


@dataclass
class GallerySource:
    """Items to index plus a loader of their pixels (dataset images go through the dataset's loader)."""

    items: list[GalleryItem]
    load: Callable[[int], Image.Image]
    description: dict[str, str]

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, keep: list[int]) -> GallerySource:
        """The source restricted to positions `keep` (in that order)."""
        return GallerySource([self.items[i] for i in keep], lambda j: self.load(keep[j]), self.description)

    def with_ids(self, ids: list[str]) -> GallerySource:
        return GallerySource([GalleryItem(i, it.path) for i, it in zip(ids, self.items, strict=True)],
                             self.load, self.description)


def source_from_directory(directory: str | Path) -> GallerySource:
    """Every image file under `directory` (recursively, sorted); ids are slugs of the relative paths."""
    root = Path(directory).resolve()
    if not root.is_dir():
        raise CirlabError(f"--images {directory}: no such directory")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise CirlabError(f"--images {directory}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    ids = unique_ids((slug(p.relative_to(root).with_suffix("").as_posix().replace("/", "-")) for p in files), set())
    items = [GalleryItem(i, str(p)) for i, p in zip(ids, files, strict=True)]
    return GallerySource(items, lambda j: load_rgb(items[j].path), {"images": str(root)})


def source_from_dataset(dataset: CIRDataset) -> GallerySource:
    """Every image of a dataset split; ids are the image file names without suffix."""
    paths = [Path(dataset.image_path(i)).resolve() for i in range(len(dataset))]
    if not paths:
        raise CirlabError(f"split {dataset.split!r} of {dataset.root} has no images")
    ids = unique_ids((slug(p.stem) for p in paths), set())
    items = [GalleryItem(i, str(p)) for i, p in zip(ids, paths, strict=True)]
    return GallerySource(items, dataset.load_image,
                         {"dataset": dataset.name, "split": dataset.split, "data_root": str(dataset.root.resolve())})
