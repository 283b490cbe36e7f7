"""FashionIQ (Wu et al. 2021): per-category or combined training, three caption-joining styles, three val galleries.

Layout: `<root>/captions/cap.<cat>.<split>.json`, `<root>/image_splits/split.<cat>.<split>.json`; images at
`<root>/images/<name>.png|jpg` or `<root>/resized_image/<cat>/<name>.png|jpg`. Only part of the original image
URLs still resolve, so missing images are counted and, with `skip_missing`, dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

from cirlab.datasets._common import (
    EvalQuery,
    ImageListDataset,
    ImageListOptions,
    check_split,
    entry_error,
    list_images,
    split_stats,
    sum_stats,
)
from cirlab.datasets.base import DATASETS, EvalSet, TrainPair
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json
from cirlab.utils.options import option

CATEGORIES = ("dress", "shirt", "toptee")
CaptionStyle = Literal["clip4cir", "composeae", "crn"]
CAPTION_STYLES: tuple[str, ...] = get_args(CaptionStyle)
GalleryProtocol = Literal["original", "val-union", "joint"]
GALLERY_PROTOCOLS = {
    "original": "gallery = every image of split.<cat>.val.json, reference not excluded (CLIP4Cir)",
    "val-union": "gallery = union of val references and targets, reference excluded (CRN, TG-CIR)",
    "joint": "one gallery for all categories = every image of the categories' split.<cat>.val.json, "
             "de-duplicated by name, reference not excluded, hit = the target's name (ComposeAE)",
}
#: The gallery protocol when `gallery_protocol` is not given: ComposeAE's captions come with ComposeAE's gallery.
DEFAULT_GALLERY_PROTOCOL = {"composeae": "joint"}


def join_captions(category: str, first: str, second: str, style: str, swap: bool = False,
                  single_category: bool = False) -> str:
    """One query text from the two relative captions, in the style of a paper.

    clip4cir: "C1 and c2" (CLIP4Cir's cleanup: trailing '.?, ' stripped, first letter capitalised; `swap`
    gives "C2 and c1", drawn at random during training); composeae: "<cat> c1 and it c2" in lower case, or
    "c1 c2" when one category is trained alone (`single_category`; ComposeAE's `cat_type` other than 'all'),
    captions kept unstripped as ComposeAE's datasets.py does; crn: "<BOS> c1 <AND> c2 <EOS>".
    """
    if style == "composeae":
        return (f"{first} {second}" if single_category else f"{category} {first} and it {second}").lower()
    first, second = first.strip(), second.strip()
    if style == "clip4cir":
        a, b = (second, first) if swap else (first, second)
        return f"{a.strip('.?, ').capitalize()} and {b.strip('.?, ')}"
    if style == "crn":
        return f"<BOS> {first} <AND> {second} <EOS>"
    raise CirlabError(f"fashioniq: caption_style must be one of {', '.join(CAPTION_STYLES)}, not {style!r}")


@dataclass
class Triplet:
    category: str
    source: int
    target: int  # -1 in the test split (no public targets)
    captions: tuple[str, str]


def parse_categories(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, list | tuple) else None
    cats = tuple(dict.fromkeys(str(c).strip() for c in items or () if str(c).strip()))
    bad = [c for c in cats if c not in CATEGORIES]
    if not cats or bad:
        raise CirlabError(f"fashioniq: categories must be a comma-separated subset of {','.join(CATEGORIES)}, "
                          f"got {value!r}")
    return cats


@dataclass
class FashionIQOptions(ImageListOptions):
    """`--dataset-option`s of fashioniq."""

    categories: str | list[str] = option(",".join(CATEGORIES), "comma-separated categories (or a list): one model "
                                                               "per category or one for all")
    caption_style: CaptionStyle = option("clip4cir", "how the two captions become one text: clip4cir, composeae "
                                                     "or crn (see join_captions)")
    gallery_protocol: GalleryProtocol | None = option(None, "original | val-union | joint; null: joint with "
                                                            "caption_style=composeae, else original")


@DATASETS.register("fashioniq")
class FashionIQDataset(ImageListDataset):
    """FashionIQ on the val split: per-category R@10/R@50 and their average over categories.

    Options: `categories` ("dress,shirt,toptee" or a subset: one model per category or one for all),
    `caption_style` (clip4cir | composeae | crn), `gallery_protocol` (original | val-union | joint; default
    `joint` with caption_style=composeae, else `original`), `skip_missing`.
    Images are indexed per (category, name): a name listed by two categories is two dataset images (the joint
    gallery keeps one of them, so its hits go by name).

    `joint` is ComposeAE's `fiq_test` (test_retrieval.py with datasets.py's FashionIQ, cat_type 'all'): the
    queries of every category rank one gallery made of the three split lists, its duplicates removed, and
    recall is counted per category. Not reproduced: that function does not reset its per-category hit counter
    between K, so its R@K for K after the first is raised by at most 1/(queries of the category), under 0.05
    points on FashionIQ val; cirlab reports exact recalls.
    """

    name = "fashioniq"
    Options = FashionIQOptions
    splits = ("train", "val")
    eval_split = "val"
    layout_hint = "<root>/images/<name>.png|jpg or <root>/resized_image/<cat>/<name>.png|jpg"

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        check_split(self.name, split, ("train", "val", "test"))
        self.categories = parse_categories(self.options.categories)
        caption_style = self.options.caption_style
        gallery_protocol = self.options.gallery_protocol or DEFAULT_GALLERY_PROTOCOL.get(caption_style, "original")
        self.caption_style, self.gallery_protocol = caption_style, gallery_protocol
        self.image_categories: list[str] = []
        self.split_images: dict[str, list[int]] = {}
        self.triplets: list[Triplet] = []
        index: dict[tuple[str, str], int] = {}

        def image(cat: str, name: str) -> int:
            if (cat, name) not in index:
                index[(cat, name)] = len(self.names)
                self.names.append(name)
                self.image_categories.append(cat)
            return index[(cat, name)]

        for cat in self.categories:
            self.split_images[cat] = [image(cat, n) for n in self._read_split(cat)]
            for entry in self._read_captions(cat):
                target = image(cat, entry["target"]) if "target" in entry else -1
                self.triplets.append(Triplet(cat, image(cat, entry["candidate"]), target,
                                             (entry["captions"][0], entry["captions"][1])))
        self._resolve_paths()
        self._train: list[Triplet] | None = None

    # files --------------------------------------------------------------------------------------
    def _read_split(self, cat: str) -> list[str]:
        path = self.root / "image_splits" / f"split.{cat}.{self.split}.json"
        names = read_json(path, "FashionIQ image split")
        if not isinstance(names, list):
            raise CirlabError(f"malformed FashionIQ image split {path}: expected a list of image names")
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name.strip():
                raise entry_error(path, i, f"expected an image name, got {name!r}")
        return names

    def _read_captions(self, cat: str) -> list[dict[str, Any]]:
        path = self.root / "captions" / f"cap.{cat}.{self.split}.json"
        entries = read_json(path, "FashionIQ captions file")
        if not isinstance(entries, list):
            raise CirlabError(f"malformed FashionIQ captions file {path}: expected a list of "
                              '{"candidate", "target", "captions"} objects')
        need_target = self.split != "test"
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise entry_error(path, i, "expected an object")
            for key in ("candidate", "target") if need_target else ("candidate",):
                if not isinstance(entry.get(key), str) or not entry[key]:
                    raise entry_error(path, i, f"{key!r} must be an image name")
            caps = entry.get("captions")
            if not isinstance(caps, list) or len(caps) != 2 or not all(isinstance(c, str) for c in caps):
                raise entry_error(path, i, "'captions' must be a list of two strings")
        return entries

    def _resolve_paths(self) -> None:
        """Find each image by one listing of `images/` and of `resized_image/<cat>/` (no per-file stat)."""
        flat = list_images(self.root / "images")
        per_cat = {cat: list_images(self.root / "resized_image" / cat) for cat in self.categories}
        self._found = np.zeros(len(self.names), dtype=bool)
        for i, (name, cat) in enumerate(zip(self.names, self.image_categories, strict=True)):
            if name in flat:
                self.paths.append(self.root / "images" / flat[name])
            elif name in per_cat[cat]:
                self.paths.append(self.root / "resized_image" / cat / per_cat[cat][name])
            else:
                self.paths.append(self.root / "images" / f"{name}.png")
                continue
            self._found[i] = True

    def find_missing(self) -> np.ndarray:
        return ~self._found

    # texts and training -------------------------------------------------------------------------
    def text(self, t: Triplet, swap: bool = False) -> str:
        return join_captions(t.category, t.captions[0], t.captions[1], self.caption_style, swap,
                             single_category=len(self.categories) == 1)

    def _training_triplets(self) -> list[Triplet]:
        if self._train is None:
            if self.split == "test":
                raise CirlabError("fashioniq test split has no targets; train on 'train'")
            missing = self.missing_mask()
            bad = [t for t in self.triplets if missing[t.source] or missing[t.target]]
            lost = sorted({i for t in bad for i in (t.source, t.target) if missing[i]})
            self.apply_missing_policy("training pairs", len(bad), len(self.triplets), lost)
            self._train = [t for t in self.triplets if not (missing[t.source] or missing[t.target])]
            if not self._train:
                raise CirlabError(f"fashioniq {self.split}: no usable training pairs")
        return self._train

    def train_texts(self) -> list[str]:
        return [self.text(t) for t in self._training_triplets()]

    def epoch_size(self) -> int:
        """The released loaders (ComposeAE, CRN, CLIP4Cir) have one sample per training triplet."""
        return len(self._training_triplets())

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        triplets = self._training_triplets()
        out = []
        for _ in range(n):
            t = triplets[rng.integers(len(triplets))]
            swap = bool(rng.random() < 0.5) if self.caption_style == "clip4cir" else False
            out.append(TrainPair(t.source, self.text(t, swap), t.target))
        return out

    # evaluation ---------------------------------------------------------------------------------
    def gallery(self, cat: str) -> list[int]:
        """The category's gallery under the chosen protocol (dataset image indices)."""
        if self.gallery_protocol == "original":
            return list(self.split_images[cat])
        if self.gallery_protocol == "joint":
            return self.joint_gallery()
        return list(dict.fromkeys(i for t in self.triplets if t.category == cat for i in (t.source, t.target)))

    def joint_gallery(self) -> list[int]:
        """One image per distinct name over the categories' split lists, in order of first listing (ComposeAE's
        de-duplicated `all_imgs_from_cat`); of a name's copies the first one present on disk."""
        missing = self.missing_mask()
        chosen: dict[str, int] = {}
        for cat in self.categories:
            for i in self.split_images[cat]:
                name = self.names[i]
                if name not in chosen or (missing[chosen[name]] and not missing[i]):
                    chosen[name] = i
        return list(chosen.values())

    def _hit_labels(self, gallery: list[int]) -> tuple[np.ndarray, Callable[[int], int]]:
        """(gallery labels, image index -> label): the image itself, or for `joint` its name (-1: not listed)."""
        if self.gallery_protocol != "joint":
            return np.array(gallery, dtype=np.int64), int
        name_ids = {self.names[g]: n for n, g in enumerate(gallery)}
        return np.arange(len(gallery), dtype=np.int64), lambda i: name_ids.get(self.names[i], -1)

    def build_eval_sets(self) -> list[EvalSet]:
        if self.split == "test":
            raise CirlabError("fashioniq test split has no public targets; evaluate on --split val")
        out = []
        for cat in self.categories:
            gallery = self.gallery(cat)
            labels, label_of = self._hit_labels(gallery)
            queries = [EvalQuery(t.source, self.text(t), {"target": label_of(t.target)}, target=t.target)
                       for t in self.triplets if t.category == cat]
            out.append(self.assemble(
                cat, queries, gallery, {"target": labels},
                exclude_source=self.gallery_protocol == "val-union", target_must_exist=True, ks=(10, 50),
                protocol=f"FashionIQ {self.split}, gallery_protocol={self.gallery_protocol}: "
                         f"{GALLERY_PROTOCOLS[self.gallery_protocol]}; caption_style={self.caption_style}"))
        return out

    def summarize(self, per_set: dict[str, dict[str, float]]) -> dict[str, float]:
        """`<cat>_recall@K` per category, `recall@K` = their average, `recall_avg` = mean of R@10 and R@50."""
        out: dict[str, float] = {}
        keys = sorted(set.intersection(*(set(m) for m in per_set.values()))) if per_set else []
        for key in keys:
            out[key] = float(np.mean([m[key] for m in per_set.values()]))
        if "recall@10" in out and "recall@50" in out:
            out["recall_avg"] = (out["recall@10"] + out["recall@50"]) / 2
        for cat, metrics in per_set.items():
            out.update({f"{cat}_{k}": float(v) for k, v in metrics.items()})
        return out

    def stats(self) -> dict[str, Any]:
        missing = self.missing_mask()
        per_cat: dict[str, dict[str, Any]] = {}
        for cat in self.categories:
            triplets = [t for t in self.triplets if t.category == cat]
            images = {i for i in self.split_images[cat]} | {i for t in triplets for i in (t.source, t.target) if i >= 0}
            broken = sum(bool(missing[t.source] or (t.target >= 0 and missing[t.target])) for t in triplets)
            counts = {"images": len(images), "missing_images": int(sum(missing[i] for i in images))}
            if self.split == "train":
                per_cat[cat] = split_stats(training_pairs=len(triplets), missing_pairs=broken, **counts)
            else:
                gallery = self.split_images[cat] if self.split == "test" else self.gallery(cat)
                per_cat[cat] = split_stats(queries=len(triplets), gallery=len(gallery), missing_queries=broken,
                                           missing_gallery=int(sum(missing[i] for i in gallery)), **counts)
        total = sum_stats(per_cat.values())
        if self.split == "val" and self.gallery_protocol == "joint":  # one gallery shared by the categories
            joint = self.joint_gallery()
            total.update(gallery=len(joint), missing_gallery=int(sum(missing[i] for i in joint)))
        protocol = {"gallery_protocol": self.gallery_protocol} if self.split == "val" else {}
        return {**total, **protocol, **per_cat}
