"""CSS (TIRG's synthetic scenes): reads `css_toy_dataset_novel2_small.dup.npy` + `images/`.

The same loader reads the original CSS3D release and the set `cirlab data css` generates. The .npy is a
pickled dict (NumPy's `allow_pickle`): pickle can run code, so only load files you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cirlab.datasets._common import as_bool, check_sampling, reject_unknown_options
from cirlab.datasets.base import DATASETS, CIRDataset, EvalSet, TrainPair, load_rgb
from cirlab.utils.errors import CirlabError

CSS_FILE = "css_toy_dataset_novel2_small.dup.npy"


def load_css_npy(root: str | Path) -> dict[str, Any]:
    """Load the CSS .npy dict with errors that name the file (missing, truncated, wrong content)."""
    path = Path(root) / CSS_FILE
    if not path.is_file():
        raise CirlabError(f"CSS file not found: {path} (generate one with `cirlab data css --out {root}`)")
    try:
        # latin1: the original CSS3D file is a Python 2 pickle whose strings and array buffers are byte strings
        data = np.load(path, allow_pickle=True, encoding="latin1").item()
    except Exception as exc:  # truncated or foreign files raise many exception types
        raise CirlabError(f"cannot read CSS file {path} (truncated or not a CSS .npy?): {exc}") from None
    if not isinstance(data, dict) or "train" not in data or "test" not in data:
        raise CirlabError(f"CSS file {path} lacks the 'train'/'test' dicts")
    return data


def scene_key(objects: list[dict]) -> tuple:
    """A canonical, order-free description of a scene (used when the file has no labels)."""
    return tuple(sorted((o["color"], o["shape"], o.get("size", ""), tuple(np.round(o["pos"], 3)))
                        for o in objects))


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
    image_size = 64
    train_augment = False
    flip_ok = False

    def __init__(self, root: str | Path, split: str, render: str = "auto", preload: Any = True,
                 skip_missing: Any = False, sampling: str = "paired", **options: Any) -> None:
        reject_unknown_options(self.name, options, ("render", "preload", "skip_missing", "sampling"))
        self.sampling = check_sampling(self.name, sampling)
        super().__init__(root, split, render=render, preload=preload)
        if render not in ("auto", "png", "2d"):
            raise CirlabError(f"css: render must be auto, png or 2d, not {render!r}")
        preload = as_bool(preload, "preload")
        if split not in ("train", "test"):
            raise CirlabError(f"CSS has splits 'train' and 'test', not {split!r}")
        data = load_css_npy(root)[split]
        try:
            self.objects: list[list[dict]] = list(data["objects_img"])
            self.mods: list[dict] = list(data["mods"])
        except KeyError as exc:
            raise CirlabError(f"CSS file {Path(root) / CSS_FILE}: split {split!r} lacks {exc}") from None
        if "labels" in data and len(data["labels"]) == len(self.objects):
            raw = [str(x) for x in data["labels"]]
        else:
            raw = [repr(scene_key(objs)) for objs in self.objects]
        names = {c: i for i, c in enumerate(dict.fromkeys(raw))}
        self.captions = raw
        self.labels = np.array([names[c] for c in raw], dtype=np.int64)
        for m, mod in enumerate(self.mods):
            if len(mod["from"]) != len(mod["to"]) or not str(mod.get("to_str", "")).strip():
                raise CirlabError(f"CSS file {Path(root) / CSS_FILE}: {split} mod {m} is malformed")
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

    def stats(self) -> dict[str, Any]:
        missing = 0 if self.render == "2d" else sum(not self.image_path(i).is_file() for i in range(len(self)))
        return {"images": len(self), "training_pairs": len(self._pairs), "mods": len(self.mods),
                "queries": len(self._pairs), "gallery": len(self), "missing_images": missing}
