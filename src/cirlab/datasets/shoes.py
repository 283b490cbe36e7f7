"""Shoes (Berg et al. 2010; relative captions by Guo et al. 2018).

Layout: `<root>/relative_captions_shoes.json` (list of `{"ImageName", "ReferenceImageName",
"RelativeCaption"}`), `<root>/train_im_names.txt`, `<root>/eval_im_names.txt`, and the images as
`*.jpg` inside folders whose names contain `womens` (e.g. `<root>/womens_boots/0/img_womens_boots_12.jpg`,
also under a wrapper such as `<root>/attributedata/`). Images are matched by file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from cirlab.datasets._common import (
    EvalQuery,
    ImageListDataset,
    check_split,
    entry_error,
    read_text_lines,
    split_stats,
)
from cirlab.datasets.base import DATASETS, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json

CAPTIONS_FILE = "relative_captions_shoes.json"
NAME_FILES = {"train": "train_im_names.txt", "test": "eval_im_names.txt"}


def find_shoe_images(root: Path) -> dict[str, Path]:
    """File name -> path of every .jpg below a folder whose name contains 'womens' (first found wins)."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        if not any("womens" in part for part in rel):
            continue
        for name in sorted(filenames):
            if name.lower().endswith(".jpg"):
                out.setdefault(name, Path(dirpath) / name)
    return out


@DATASETS.register("shoes")
class ShoesDataset(ImageListDataset):
    """Shoes: a query is a caption triplet whose two images are in the split's name list; gallery = the split's
    images; the query image is excluded; a hit is the target image; R@1/10/50. Options: `skip_missing`."""

    name = "shoes"
    splits = ("train", "test")
    layout_hint = "<root>/<folder containing 'womens'>/<n>/<name>.jpg"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        check_split(self.name, split, self.splits)
        names_file = self.root / NAME_FILES[split]
        self.names = list(dict.fromkeys(line.strip() for _, line in read_text_lines(names_file, "Shoes name list")))
        found = find_shoe_images(self.root)
        self.paths = [found.get(n, self.root / n) for n in self.names]
        self._found = np.array([n in found for n in self.names], dtype=bool)
        index = {n: i for i, n in enumerate(self.names)}
        path = self.root / CAPTIONS_FILE
        entries = read_json(path, "Shoes captions file")
        if not isinstance(entries, list):
            raise CirlabError(f"malformed Shoes captions file {path}: expected a list of objects")
        self.triplets: list[tuple[int, str, int]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise entry_error(path, i, "expected an object")
            for key in ("ImageName", "ReferenceImageName", "RelativeCaption"):
                if not isinstance(entry.get(key), str):
                    raise entry_error(path, i, f"{key!r} must be a string")
            src, tgt = entry["ReferenceImageName"], entry["ImageName"]
            if src in index and tgt in index:
                self.triplets.append((index[src], entry["RelativeCaption"].strip(), index[tgt]))
        if not self.triplets:
            raise CirlabError(f"no caption of {path} has both images in {names_file}")
        self._pairs: list[TrainPair] | None = None

    def find_missing(self) -> np.ndarray:
        return ~self._found

    def listed_pairs(self) -> list[TrainPair]:
        if self._pairs is None:
            self._pairs = self.usable_pairs([TrainPair(s, text, t) for s, text, t in self.triplets])
            if not self._pairs:
                raise CirlabError(f"shoes {self.split}: no usable training pairs")
        return self._pairs

    def build_eval_sets(self) -> list[EvalSet]:
        gallery = list(range(len(self)))
        queries = [EvalQuery(s, text, {"target": t}, target=t) for s, text, t in self.triplets]
        return [self.assemble(
            self.split, queries, gallery, {"target": np.array(gallery, dtype=np.int64)}, exclude_source=True,
            target_must_exist=True, ks=(1, 10, 50),
            protocol=f"Shoes: gallery = all {NAME_FILES[self.split]} images, query image excluded, hit = target")]

    def stats(self) -> dict[str, Any]:
        missing = self.missing_mask()
        broken = sum(bool(missing[s] or missing[t]) for s, _, t in self.triplets)
        counts = {"images": len(self), "missing_images": int(missing.sum())}
        if self.split == "train":
            return split_stats(training_pairs=len(self.triplets), missing_pairs=broken, **counts)
        return split_stats(queries=len(self.triplets), gallery=len(self), missing_queries=broken, **counts)
