"""CIRR (Liu et al. 2021), release rc2: real-life image pairs from NLVR2.

Layout (as the CIRR repository describes it): annotations in `<root>/captions/cap.rc2.<split>.json` and
`<root>/image_splits/split.rc2.<split>.json` (also found under `<root>/cirr/`); the image split maps each
name to a relative path such as `./train/34/<name>.png` or `./dev/<name>.png`, resolved against `<root>/`
or `<root>/img_raw/`. Splits: train, val (images under `dev/`), test1 (no public targets).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from cirlab.datasets._common import (
    EvalQuery,
    ImageListDataset,
    check_split,
    entry_error,
    split_stats,
)
from cirlab.datasets.base import DATASETS, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json

PROTOCOL = ("CIRR: gallery = all images of the split, reference always excluded, hit = target_hard; "
            "recall_subset ranks the img_set members minus the reference")


@DATASETS.register("cirr")
class CIRRDataset(ImageListDataset):
    """CIRR: R@1/5/10/50 over the split's images and Recall_subset@1/2/3 within each query's img_set.

    `EvalSet.query_ids` are the pair ids, used by `cirlab submit-cirr` for the test1 server files.
    Options: `skip_missing`.
    """

    name = "cirr"
    splits = ("train", "val", "test1")
    eval_split = "val"
    flip_ok = False  # captions say "left" and "right"
    layout_hint = "<root>/<relative path of image_splits>, or <root>/img_raw/<relative path>"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        check_split(self.name, split, self.splits)
        ann = self.root / "cirr" if not (self.root / "captions").is_dir() and (self.root / "cirr").is_dir() \
            else self.root
        split_path = ann / "image_splits" / f"split.rc2.{split}.json"
        mapping = read_json(split_path, "CIRR image split")
        if not isinstance(mapping, dict):
            raise CirlabError(f"malformed CIRR image split {split_path}: expected {{name: relative path}}")
        bases: dict[str, Path] = {}
        for name, rel in mapping.items():
            if not isinstance(rel, str) or not rel.strip():
                raise entry_error(split_path, repr(name), f"expected a relative image path, got {rel!r}")
            parts = PurePosixPath(rel).parts
            top = parts[0] if parts else ""
            if top not in bases:
                plain, raw = self.root / top, self.root / "img_raw" / top
                bases[top] = self.root / "img_raw" if raw.is_dir() and not plain.is_dir() else self.root
            self.names.append(name)
            self.paths.append(bases[top].joinpath(*parts))
        index = {n: i for i, n in enumerate(self.names)}
        self.captions_path = ann / "captions" / f"cap.rc2.{split}.json"
        self.queries = self._read_captions(self.captions_path, index, has_target=split != "test1")
        self._pairs: list[TrainPair] | None = None

    def _read_captions(self, path: Path, index: dict[str, int], has_target: bool) -> list[EvalQuery]:
        entries = read_json(path, "CIRR captions file")
        if not isinstance(entries, list):
            raise CirlabError(f"malformed CIRR captions file {path}: expected a list of objects")
        out = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise entry_error(path, i, "expected an object")
            where = f"{i} (pairid {entry.get('pairid')!r})"
            if not isinstance(entry.get("pairid"), int | str) or isinstance(entry.get("pairid"), bool):
                raise entry_error(path, where, "'pairid' must be an integer")
            if not isinstance(entry.get("caption"), str):
                raise entry_error(path, where, "'caption' must be a string")
            names = {"reference": entry.get("reference")}
            if has_target:
                names["target_hard"] = entry.get("target_hard")
            img_set = entry.get("img_set")
            members = img_set.get("members") if isinstance(img_set, dict) else None
            if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
                raise entry_error(path, where, "'img_set' must hold a 'members' list of image names")
            for key, value in names.items():
                if not isinstance(value, str):
                    raise entry_error(path, where, f"{key!r} must be an image name")
            unknown = [n for n in [*names.values(), *members] if n not in index]
            if unknown:
                raise entry_error(path, where, f"image {unknown[0]!r} is not in image_splits/split.rc2.{self.split}"
                                               ".json")
            source = index[names["reference"]]
            target = index[names["target_hard"]] if has_target else -1
            candidates = [index[m] for m in dict.fromkeys(members) if index[m] != source]
            out.append(EvalQuery(source, entry["caption"], {"target": target}, target=target,
                                 query_id=str(entry["pairid"]), candidates=candidates))
        return out

    def listed_pairs(self) -> list[TrainPair]:
        if self._pairs is None:
            if self.split == "test1":
                raise CirlabError("cirr test1 has no targets; train on 'train'")
            self._pairs = self.usable_pairs([TrainPair(q.source, q.text, q.target) for q in self.queries])
            if not self._pairs:
                raise CirlabError(f"cirr {self.split}: no usable training pairs")
        return self._pairs

    def build_eval_sets(self) -> list[EvalSet]:
        gallery = list(range(len(self)))
        has_targets = self.split != "test1"
        protocol = PROTOCOL if has_targets else PROTOCOL + " (test1 has no public targets: recall here is 0; " \
                                                           "upload `cirlab submit-cirr` files to the CIRR server)"
        return [self.assemble(
            self.split, self.queries, gallery, {"target": np.array(gallery, dtype=np.int64)}, exclude_source=True,
            target_must_exist=True, ks=(1, 5, 10, 50), subset_ks=(1, 2, 3), protocol=protocol)]

    def stats(self) -> dict[str, Any]:
        missing = self.missing_mask()
        broken = sum(bool(missing[q.source] or (q.target >= 0 and missing[q.target])) for q in self.queries)
        counts = {"images": len(self), "missing_images": int(missing.sum())}
        if self.split == "train":
            return split_stats(training_pairs=len(self.queries), missing_pairs=broken, **counts)
        return split_stats(queries=len(self.queries), gallery=len(self), missing_queries=broken, **counts)
