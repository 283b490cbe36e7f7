"""CSS (TIRG's synthetic scenes): reads `css_toy_dataset_novel2_small.dup.npy` + `images/`.

The same loader reads the original CSS3D release and the set `cirlab data css` generates. The .npy is a
pickled dict; it is read with a restricted unpickler (`cirlab.utils.safe_pickle`) that never runs code from the
file, then checked field by field (types, lengths, index ranges) so that a damaged file is one error naming the
file and the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from PIL import Image

from cirlab.datasets._common import SAMPLING_HELP, Sampling
from cirlab.datasets.base import DATASETS, CIRDataset, EvalSet, TrainPair, load_rgb
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option
from cirlab.utils.safe_pickle import load_pickled_npy

if TYPE_CHECKING:
    from cirlab.datasets.css_user import CSSSimulatedUser

CSS_FILE = "css_toy_dataset_novel2_small.dup.npy"


def load_css_npy(root: str | Path) -> dict[str, Any]:
    """Load and check the CSS .npy dict, with errors that name the file and field (missing, truncated, a name
    pickle would call, wrong types); nothing in the file is ever run."""
    path = Path(root) / CSS_FILE
    if not path.is_file():
        raise CirlabError(f"CSS file not found: {path} (generate one with `cirlab data css --out {root}`)")
    # the original CSS3D file is a Python 2 pickle: the loader reads its byte strings as latin1
    data = load_pickled_npy(path, "CSS file")
    if not isinstance(data, dict) or not isinstance(data.get("train"), dict) or not isinstance(data.get("test"), dict):
        raise CirlabError(f"CSS file {path} lacks the 'train'/'test' dicts")
    for split in ("train", "test"):
        check_css_split(data[split], split, path)
    return data


def _sequence(value: Any) -> bool:
    return isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim == 1)


def _indices(value: Any, count: int, where: str) -> None:
    """`value` is a 1-d sequence of integers in [0, count)."""
    array = np.asarray(value) if _sequence(value) else None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise CirlabError(f"{where} must be a list of image indices, not {type(value).__name__}")
    if array.size and (array.min() < 0 or array.max() >= count):
        raise CirlabError(f"{where} holds an image index outside 0..{count - 1}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)


def check_css_split(split_data: dict[str, Any], split: str, path: Path) -> None:
    """Types, lengths and index ranges of one split (`objects_img`, `mods`, optional `labels`)."""
    where = f"CSS file {path}: {split}"
    for key in ("objects_img", "mods"):
        if key not in split_data:
            raise CirlabError(f"{where} lacks '{key}'")
    scenes = split_data["objects_img"]
    if not _sequence(scenes):
        raise CirlabError(f"{where}.objects_img must be a list of scenes, not {type(scenes).__name__}")
    for i, scene in enumerate(scenes):
        if not _sequence(scene):
            raise CirlabError(f"{where}.objects_img[{i}] must be a list of objects, not {type(scene).__name__}")
        for j, obj in enumerate(scene):
            at = f"{where}.objects_img[{i}][{j}]"
            if not isinstance(obj, dict):
                raise CirlabError(f"{at} must be a dict, not {type(obj).__name__}")
            for key in ("color", "shape", "size"):
                if not isinstance(obj.get(key, ""), str) or (key != "size" and key not in obj):
                    raise CirlabError(f"{at}.{key} must be a string")
            pos = obj.get("pos")
            if not (_sequence(pos) and len(pos) == 2 and all(_is_number(p) for p in pos)):
                raise CirlabError(f"{at}.pos must be two numbers (y, x)")
    labels = split_data.get("labels")
    if labels is not None and not _sequence(labels):
        raise CirlabError(f"{where}.labels must be a list, not {type(labels).__name__}")
    mods = split_data["mods"]
    if not _sequence(mods):
        raise CirlabError(f"{where}.mods must be a list of dicts, not {type(mods).__name__}")
    for m, mod in enumerate(mods):
        if not isinstance(mod, dict) or not {"from", "to", "to_str"} <= set(mod):
            raise CirlabError(f"{where} mod {m} is malformed: not a dict with 'from', 'to' and 'to_str'")
        if not isinstance(mod["to_str"], str) or not mod["to_str"].strip():
            raise CirlabError(f"{where} mod {m} is malformed: 'to_str' must be a non-empty string")
        _indices(mod["from"], len(scenes), f"{where} mod {m} 'from'")
        _indices(mod["to"], len(scenes), f"{where} mod {m} 'to'")
        if len(mod["from"]) != len(mod["to"]):
            raise CirlabError(f"{where} mod {m} is malformed: 'from' and 'to' differ in length")


def scene_key(objects: list[dict]) -> tuple:
    """A canonical, order-free description of a scene (used when the file has no labels)."""
    return tuple(sorted((o["color"], o["shape"], o.get("size", ""), tuple(np.round(o["pos"], 3)))
                        for o in objects))


@dataclass
class CSSOptions:
    """`--dataset-option`s of css."""

    render: Literal["auto", "png", "2d"] = option("auto", "png: read images/; 2d: draw TIRG's 64x64 2D scene from "
                                                          "the objects; auto: png when the PNGs exist")
    preload: bool = option(True, "keep the decoded split in memory (small: 64x64 images)")
    skip_missing: bool = option(False, "accepted for every dataset's --skip-missing; no effect on CSS (a missing "
                                       "PNG is an error, or use render=2d)")
    sampling: Sampling = option("paired", SAMPLING_HELP)


@DATASETS.register("css")
class CSSDataset(CIRDataset):
    """CSS with TIRG's protocol: every (from, to) pair of every test mod is a query; the gallery is every
    test image; the query image is excluded; a hit is any image whose caption (label) equals the target's.

    Training pairs follow google/tirg's sampler by default (`sampling="paired"`): a random (mod, from, to), then
    the same source image with a different mod, so every batch holds pairs of queries that share a reference
    (in-batch hard negatives). `sampling="independent"` draws every pair on its own (cirlab <= 0.1).
    Options: `render="auto"|"png"|"2d"` (2d draws TIRG's 64x64 2D scene from the objects instead of reading
    the PNG), `preload=True` keeps the decoded split in memory (small: 64x64 images). `skip_missing` is
    accepted and has no effect: a missing PNG is an error (or use render=2d).
    """

    name = "css"
    Options = CSSOptions
    image_size = 64
    train_augment = False
    flip_ok = False
    backbone_lr_mult = 1.0

    def __init__(self, root: str | Path, split: str, **options: Any) -> None:
        super().__init__(root, split, **options)
        self.sampling, render, preload = self.options.sampling, self.options.render, self.options.preload
        if split not in ("train", "test"):
            raise CirlabError(f"CSS has splits 'train' and 'test', not {split!r}")
        data = load_css_npy(root)[split]  # checked: types, lengths, index ranges
        self.objects: list[list[dict]] = list(data["objects_img"])
        self.mods: list[dict] = list(data["mods"])
        if data.get("labels") is not None and len(data["labels"]) == len(self.objects):
            raw = [str(x) for x in data["labels"]]
        else:
            raw = [repr(scene_key(objs)) for objs in self.objects]
        names = {c: i for i, c in enumerate(dict.fromkeys(raw))}
        self.captions = raw
        self.labels = np.array([names[c] for c in raw], dtype=np.int64)
        self._pairs = [(m, i) for m, mod in enumerate(self.mods) for i in range(len(mod["from"]))]
        self._sources: dict[int, list[tuple[int, int]]] | None = None
        png0 = self.image_path(0) if self.objects else None
        self.render = ("png" if png0 is not None and png0.is_file() else "2d") if render == "auto" else render
        self._cache: list[Image.Image] | None = None
        if preload:
            self._cache = [self._read(i) for i in range(len(self.objects))]

    def __len__(self) -> int:
        return len(self.objects)

    def image_path(self, index: int) -> Path:
        return self.root / "images" / f"css_{self.split}_{index:06d}.png"

    def _read(self, index: int) -> Image.Image:
        if self.render == "2d":
            from cirlab.datasets.css_render import render_scene

            return render_scene(self.objects[index], image_size=64)
        return load_rgb(self.image_path(index))

    def load_image(self, index: int) -> Image.Image:
        return self._cache[index] if self._cache is not None else self._read(index)

    def train_texts(self) -> list[str]:
        return [str(mod["to_str"]) for mod in self.mods]

    def sample_pairs(self, rng: np.random.Generator, n: int) -> list[TrainPair]:
        out: list[TrainPair] = []
        while len(out) < n:
            m = int(rng.integers(len(self.mods)))
            i = int(rng.integers(len(self.mods[m]["from"])))
            out.append(self._pair(m, i))
            if self.sampling == "paired" and len(out) < n:
                # google/tirg: the second query reuses the source with any (mod, target) of another mod
                others = [(m2, i2) for m2, i2 in self._mods_from()[out[-1].source] if m2 != m]
                if others:
                    out.append(self._pair(*others[int(rng.integers(len(others)))]))
        return out

    def epoch_size(self) -> int:
        """google/tirg's CSSDataset has one sample per image."""
        return len(self.objects)

    def _pair(self, m: int, i: int) -> TrainPair:
        mod = self.mods[m]
        return TrainPair(int(mod["from"][i]), str(mod["to_str"]), int(mod["to"][i]))

    def _mods_from(self) -> dict[int, list[tuple[int, int]]]:
        """source image -> every (mod, pair position) that starts from it (built on first use)."""
        if self._sources is None:
            self._sources = {}
            for m, i in self._pairs:
                self._sources.setdefault(int(self.mods[m]["from"][i]), []).append((m, i))
        return self._sources

    def queries(self) -> list[TrainPair]:
        """Every (from, to) pair of every mod, in file order."""
        return [TrainPair(int(self.mods[m]["from"][i]), str(self.mods[m]["to_str"]), int(self.mods[m]["to"][i]))
                for m, i in self._pairs]

    def eval_sets(self) -> list[EvalSet]:
        queries = self.queries()
        sources = [q.source for q in queries]
        return [EvalSet(
            name=self.split,
            query_images=sources,
            query_texts=[q.text for q in queries],
            gallery_images=list(range(len(self))),
            query_labels={"caption": self.labels[[q.target for q in queries]]},
            gallery_labels={"caption": self.labels},
            exclude=np.array(sources, dtype=np.int64),
            ks=(1, 5, 10, 50, 100),
            protocol="TIRG CSS: gallery = all split images, query image excluded, hit = same caption",
        )]

    def simulated_user(self) -> CSSSimulatedUser:
        """The generator's own difference texts between scenes (`cirlab.datasets.css_user`)."""
        from cirlab.datasets.css_user import CSSSimulatedUser  # css_synth imports this module

        return CSSSimulatedUser(self.objects, self.labels)

    def stats(self) -> dict[str, Any]:
        missing = 0 if self.render == "2d" else sum(not self.image_path(i).is_file() for i in range(len(self)))
        return {"images": len(self), "training_pairs": len(self._pairs), "mods": len(self.mods),
                "queries": len(self._pairs), "gallery": len(self), "missing_images": missing}
