"""A synthetic CSS benchmark in TIRG's CSS3D on-disk format, with texts that a parser can apply.

Scenes hold 1-5 objects on distinct cells of a 3x3 grid. Every modification text ("add large red circle to
top-left", "remove blue triangle", "make middle-center object yellow") is exact: `apply_modification`
parses it and turns the source scene into the target scene, which the generator guarantees for every
(from, to) pair. `describe_difference` names one step from a scene towards another, for simulated users
in multi-turn retrieval.

Layout: each split is made of small trees, a random root scene with two different modifications, each of
whose results gets two more (7 images, 6 queries: queries are about 0.86 x images, like the paper's 16K
queries on 19K images). Every image that is a source has two different texts leaving it, which TIRG's
training sampler relies on. Images with identical scenes share a label, so "hit = caption equality" holds.
A seeded share of (shape, color) combinations is "novel": no training image contains it, and every test
image contains at least one.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cirlab.datasets.css import CSS_FILE, load_css_npy
from cirlab.datasets.css_render import COLORS, SHAPES, SIZES, render_scene
from cirlab.utils.errors import CirlabError

ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
#: Cell names, indexed by `row * 3 + column` (row = y).
POSITIONS: tuple[str, ...] = tuple(f"{row}-{col}" for row in ROWS for col in COLUMNS)
#: Cell centres of the 3x3 grid, as fractions of the image side.
CELL_CENTRES: tuple[float, ...] = (1 / 6, 3 / 6, 5 / 6)
GENERATOR_VERSION = 1

_BRANCHING = 2
_DEPTH = 2
_TREE_SIZE = sum(_BRANCHING**d for d in range(_DEPTH + 1))
_MAX_TRIES = 200

Scene = list[dict[str, Any]]


@dataclass
class CSSSynthConfig:
    """What to generate; saved in the .npy (`generator_config`) so a matching set is not regenerated."""

    seed: int = 0
    train_images: int = 4000
    test_images: int = 2000
    image_size: int = 64
    novel_fraction: float = 1 / 3
    max_objects: int = 5


PAPER_SCALE = CSSSynthConfig(train_images=19000, test_images=19000)


# scenes ---------------------------------------------------------------------------------------------------
def make_object(color: str, shape: str, size: str, cell: int) -> dict[str, Any]:
    """An object in TIRG's format, centred on grid cell `cell` (0 = top-left, 8 = bottom-right)."""
    return {"color": color, "shape": shape, "size": size,
            "pos": (CELL_CENTRES[cell // 3], CELL_CENTRES[cell % 3])}


def cell_of(obj: Mapping[str, Any]) -> int:
    """The grid cell (0-8) whose area contains the object's centre."""
    row, col = (min(max(int(np.floor(float(p) * 3)), 0), 2) for p in obj["pos"])
    return row * 3 + col


def scene_signature(objects: Iterable[Mapping[str, Any]]) -> tuple[tuple[str, str, str, int], ...]:
    """The scene as a sorted multiset of (color, shape, size, cell): equal signatures = same scene."""
    return tuple(sorted((o["color"], o["shape"], o["size"], cell_of(o)) for o in objects))


def _copy(objects: Iterable[Mapping[str, Any]]) -> Scene:
    return [{**o, "pos": tuple(o["pos"])} for o in objects]


# texts ----------------------------------------------------------------------------------------------------
def add_text(color: str, shape: str, size: str, cell: int) -> str:
    return f"add {size} {color} {shape} to {POSITIONS[cell]}"


def remove_text(objects: Sequence[Mapping[str, Any]], index: int) -> str:
    """"remove <color> <shape>", naming the position too when another object has the same color and shape."""
    obj = objects[index]
    same = sum(o["color"] == obj["color"] and o["shape"] == obj["shape"] for o in objects)
    text = f"remove {obj['color']} {obj['shape']}"
    return text if same == 1 else f"{text} at {POSITIONS[cell_of(obj)]}"


def change_text(obj: Mapping[str, Any], attribute: str, value: str) -> str:
    where = POSITIONS[cell_of(obj)]
    if attribute == "color":
        return f"make {where} object {value}"
    if attribute == "size":
        return f"make {where} {obj['shape']} {value}"
    if attribute == "shape":
        return f"make {where} object a {value}"
    raise ValueError(f"unknown attribute {attribute!r}")


_VOCABULARY = {**{c: "color" for c in COLORS}, **{s: "shape" for s in SHAPES}, **{z: "size" for z in SIZES}}
_FILLERS = {"a", "an", "the", "object"}


def _parse_selector(words: Sequence[str], text: str) -> tuple[dict[str, str], int | None]:
    """Attributes and cell named by words like "small blue triangle at top-left" or "top-right object"."""
    attrs: dict[str, str] = {}
    cell: int | None = None
    for word in words:
        if word in _FILLERS or word == "at":
            continue
        if word in POSITIONS:
            if cell is not None:
                raise ValueError(f"{text!r}: more than one position")
            cell = POSITIONS.index(word)
        elif word in _VOCABULARY:
            kind = _VOCABULARY[word]
            if kind in attrs:
                raise ValueError(f"{text!r}: more than one {kind}")
            attrs[kind] = word
        else:
            raise ValueError(f"{text!r}: unknown word {word!r}")
    return attrs, cell


def _select(objects: Sequence[Mapping[str, Any]], words: Sequence[str], text: str) -> int:
    attrs, cell = _parse_selector(words, text)
    hits = [i for i, o in enumerate(objects)
            if (cell is None or cell_of(o) == cell) and all(o[k] == v for k, v in attrs.items())]
    if len(hits) != 1:
        raise ValueError(f"{text!r} names {len(hits)} objects of the scene, not exactly one")
    return hits[0]


def apply_modification(objects: Sequence[Mapping[str, Any]], text: str) -> Scene:
    """Parse a modification text and return the modified scene (a new list; the input is untouched).

    Understands "add <size> <color> <shape> to <position>", "remove <description> [at <position>]" and
    "make <position> <description> <color|size|a shape>". Raises ValueError when the text cannot be
    applied: unknown words, an object it does not name exactly once, or an occupied cell for "add".
    """
    words = text.lower().replace(",", " ").split()
    if not words:
        raise ValueError("empty modification text")
    verb, rest = words[0], words[1:]
    scene = _copy(objects)
    if verb == "add":
        if "to" not in rest:
            raise ValueError(f"{text!r}: 'add' needs 'to <position>'")
        split = rest.index("to")
        attrs, at = _parse_selector(rest[:split], text)
        _, cell = _parse_selector(rest[split + 1:], text)
        if at is not None or cell is None or len(attrs) != 3:
            raise ValueError(f"{text!r}: 'add' needs size, color, shape and one target position")
        if any(cell_of(o) == cell for o in scene):
            raise ValueError(f"{text!r}: {POSITIONS[cell]} is occupied")
        return [*scene, make_object(attrs["color"], attrs["shape"], attrs["size"], cell)]
    if verb == "remove":
        index = _select(scene, rest, text)
        return scene[:index] + scene[index + 1:]
    if verb == "make":
        if not rest:
            raise ValueError(f"{text!r}: 'make' needs an object and a new value")
        value, selector = rest[-1], rest[:-1]
        if value not in _VOCABULARY:
            raise ValueError(f"{text!r}: the new value {value!r} is not a color, size or shape")
        if _VOCABULARY[value] == "shape" and selector and selector[-1] in ("a", "an"):
            selector = selector[:-1]
        index = _select(scene, selector, text)
        scene[index][_VOCABULARY[value]] = value
        return scene
    raise ValueError(f"{text!r}: unknown verb {verb!r} (add, remove, make)")


def describe_difference(src_objects: Sequence[Mapping[str, Any]],
                        tgt_objects: Sequence[Mapping[str, Any]]) -> str | None:
    """One modification text that brings `src_objects` one step closer to `tgt_objects` (None if equal).

    Steps, in order: fix one attribute of an object on a cell both scenes use; remove an object the target
    lacks (unless it is the last one); add a missing object. Each step lowers (differing attributes + extra
    objects + missing objects) by one, so applying the texts repeatedly reaches the target.
    """
    if scene_signature(src_objects) == scene_signature(tgt_objects):
        return None
    src = {cell_of(o): (i, o) for i, o in enumerate(src_objects)}
    tgt = {cell_of(o): o for o in tgt_objects}
    if len(src) != len(src_objects) or len(tgt) != len(tgt_objects):
        raise ValueError("describe_difference needs scenes with at most one object per cell")
    for cell in sorted(src.keys() & tgt.keys()):
        obj, want = src[cell][1], tgt[cell]
        for attribute in ("color", "shape", "size"):
            if obj[attribute] != want[attribute]:
                return change_text(obj, attribute, want[attribute])
    extra = sorted(src.keys() - tgt.keys())
    missing = sorted(tgt.keys() - src.keys())
    if extra and (len(src_objects) > 1 or not missing):
        return remove_text(src_objects, src[extra[0]][0])
    want = tgt[missing[0]]
    return add_text(want["color"], want["shape"], want["size"], missing[0])


# generation -----------------------------------------------------------------------------------------------
def choose_novel_combinations(rng: np.random.Generator, fraction: float) -> list[tuple[str, str]]:
    """Pick round(fraction * 24) (shape, color) pairs, spread evenly over shapes and colours.

    Every colour keeps at least one training shape and every shape keeps training colours, so the novel
    pairs are new combinations of attributes that training has seen.
    """
    total = len(SHAPES) * len(COLORS)
    count = round(fraction * total)
    if not 0 <= count <= total - len(COLORS):
        raise ValueError(f"novel_fraction must be in [0, 2/3], got {fraction}")
    novel: list[tuple[str, str]] = []
    per_shape = dict.fromkeys(SHAPES, 0)
    colors = [COLORS[i] for i in rng.permutation(len(COLORS))]
    for k in range(count):
        color = colors[k % len(colors)]
        free = [s for s in SHAPES if (s, color) not in novel]
        least = min(per_shape[s] for s in free)
        candidates = [s for s in free if per_shape[s] == least]
        shape = candidates[int(rng.integers(len(candidates)))]
        novel.append((shape, color))
        per_shape[shape] += 1
    return sorted(novel, key=lambda sc: (SHAPES.index(sc[0]), COLORS.index(sc[1])))


def _combination(obj: Mapping[str, Any]) -> tuple[str, str]:
    return obj["shape"], obj["color"]


class _SplitBuilder:
    """Samples one split's scenes and modifications (trees of depth 2, branching 2)."""

    def __init__(self, rng: np.random.Generator, config: CSSSynthConfig, allowed: list[tuple[str, str]],
                 novel: set[tuple[str, str]] | None) -> None:
        self.rng = rng
        self.config = config
        self.allowed = allowed
        self.allowed_set = set(allowed)
        self.novel = novel
        self.images: list[Scene] = []
        self.pairs: list[tuple[int, int, str]] = []

    def _pick(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def _has_novel(self, scene: Scene) -> bool:
        return self.novel is None or any(_combination(o) in self.novel for o in scene)

    def sample_scene(self) -> Scene:
        count = int(self.rng.integers(1, self.config.max_objects + 1))
        cells = self.rng.choice(len(POSITIONS), size=count, replace=False)
        scene = []
        for k, cell in enumerate(cells):
            pool = sorted(self.novel) if k == 0 and self.novel else self.allowed
            shape, color = self._pick(pool)
            scene.append(make_object(color, shape, self._pick(SIZES), int(cell)))
        return scene

    def sample_modification(self, scene: Scene) -> tuple[str, Scene] | None:
        """One random valid modification of `scene` as (text, target), or None if this draw failed."""
        kinds = ["change"]
        if len(scene) < self.config.max_objects:
            kinds.append("add")
        if len(scene) >= 2:
            kinds.append("remove")
        kind = self._pick(kinds)
        if kind == "add":
            occupied = {cell_of(o) for o in scene}
            cell = self._pick([c for c in range(len(POSITIONS)) if c not in occupied])
            shape, color = self._pick(self.allowed)
            size = self._pick(SIZES)
            text = add_text(color, shape, size, cell)
            target = [*_copy(scene), make_object(color, shape, size, cell)]
        elif kind == "remove":
            index = int(self.rng.integers(len(scene)))
            text, target = remove_text(scene, index), _copy(scene[:index] + scene[index + 1:])
        else:
            index = int(self.rng.integers(len(scene)))
            obj = scene[index]
            attribute = self._pick(("color", "size", "shape"))
            values = {"color": COLORS, "size": SIZES, "shape": SHAPES}[attribute]
            options = [v for v in values
                       if v != obj[attribute] and _combination({**obj, attribute: v}) in self.allowed_set]
            if not options:
                return None
            value = self._pick(options)
            text, target = change_text(obj, attribute, value), _copy(scene)
            target[index][attribute] = value
        return (text, target) if self._has_novel(target) else None

    def add_image(self, scene: Scene) -> int:
        self.images.append(scene)
        return len(self.images) - 1

    def build(self, n_images: int) -> None:
        while len(self.images) + _TREE_SIZE <= n_images:
            frontier = [self.add_image(self.sample_scene())]
            for _ in range(_DEPTH):
                children = []
                for node in frontier:
                    texts: set[str] = set()
                    for _ in range(_MAX_TRIES):
                        if len(texts) == _BRANCHING:
                            break
                        drawn = self.sample_modification(self.images[node])
                        if drawn is None or drawn[0] in texts:
                            continue
                        texts.add(drawn[0])
                        child = self.add_image(drawn[1])
                        self.pairs.append((node, child, drawn[0]))
                        children.append(child)
                frontier = children
        while len(self.images) < n_images:
            self.add_image(self.sample_scene())

    def to_tirg(self) -> dict[str, Any]:
        """The split in TIRG's format: objects_img, mods (one per text), labels (one per distinct scene)."""
        label_of: dict[tuple, int] = {}
        labels = [label_of.setdefault(scene_signature(s), len(label_of)) for s in self.images]
        mods: dict[str, dict[str, Any]] = {}
        for src, tgt, text in self.pairs:
            mod = mods.setdefault(text, {"from": [], "to": [], "to_str": text})
            mod["from"].append(src)
            mod["to"].append(tgt)
        return {"objects_img": self.images, "mods": list(mods.values()), "labels": labels}


def build_css_data(config: CSSSynthConfig) -> dict[str, Any]:
    """The whole .npy content for `config` (no files written): deterministic for `config.seed`."""
    if config.train_images < 0 or config.test_images < 0:
        raise ValueError("image counts must be >= 0")
    if not 1 <= config.max_objects <= len(POSITIONS):
        raise ValueError(f"max_objects must be in 1..{len(POSITIONS)}, got {config.max_objects}")
    rng = np.random.default_rng(config.seed)
    novel = choose_novel_combinations(rng, config.novel_fraction)
    everything = [(s, c) for s in SHAPES for c in COLORS]
    train = _SplitBuilder(rng, config, [sc for sc in everything if sc not in novel], None)
    train.build(config.train_images)
    test = _SplitBuilder(rng, config, everything, set(novel) or None)
    test.build(config.test_images)
    return {
        "train": train.to_tirg(),
        "test": test.to_tirg(),
        "novel_combinations": [f"{color} {shape}" for shape, color in novel],
        "generator_config": asdict(config),
        "generator_version": GENERATOR_VERSION,
    }


def image_path(out_dir: str | Path, split: str, index: int) -> Path:
    """TIRG's image file name for image `index` of `split`."""
    return Path(out_dir) / "images" / f"css_{split}_{index:06d}.png"


PARTIAL_MARKER = ".cirlab_css_partial"  # present while generate_css writes a set; marks its images as ours


def existing_set(out: Path, config: CSSSynthConfig) -> str | None:
    """What `generate_css(out, config)` would replace: None when nothing (an empty folder, or an interrupted
    generation of ours), "same" for a complete set of this config, else a one-line description."""
    npy = out / CSS_FILE
    if not npy.exists():
        has_images = (out / "images").is_dir() and any((out / "images").glob("css_*.png"))
        if has_images and not (out / PARTIAL_MARKER).is_file():
            return f"{out / 'images'} holds CSS images but {out} has no {CSS_FILE}"
        return None
    try:
        data = load_css_npy(out)  # restricted unpickler: a planted file runs nothing
    except CirlabError as exc:
        return str(exc)
    found = data.get("generator_config")
    if data.get("generator_version") != GENERATOR_VERSION or not isinstance(found, dict):
        return f"{npy} is a CSS set that `cirlab data css` did not generate (e.g. the original CSS3D)"
    if found != asdict(config):
        changed = ", ".join(f"{k} {found.get(k)!r} -> {v!r}" for k, v in asdict(config).items() if found.get(k) != v)
        return f"{npy} holds a generated set with other settings ({changed})"
    counts = {"train": config.train_images, "test": config.test_images}
    if all(n == 0 or image_path(out, split, n - 1).is_file() for split, n in counts.items()):
        return "same"
    return None  # our own set with these settings, some images deleted: regenerating restores it as it was


def generate_css(out_dir: str | Path, config: CSSSynthConfig, progress: bool = True, force: bool = False) -> Path:
    """Write a synthetic CSS set (images, then the .npy) to `out_dir` and return the .npy path.

    The .npy is written last and atomically, so its presence marks a complete set. When `out_dir` already holds a
    complete set of this config the call returns at once (nothing is rewritten). A different set (other settings,
    a foreign or unreadable .npy, CSS images without a .npy) is refused with CirlabError unless `force`, which
    replaces it (and deletes its images beyond the new counts). An interrupted generation of ours is continued
    without `force`. The existing .npy is read with the restricted unpickler, so a planted file runs nothing."""
    out = Path(out_dir)
    npy = out / CSS_FILE
    existing = existing_set(out, config) if out.is_dir() else None
    if existing == "same":
        return npy
    if existing is not None and not force:
        raise CirlabError(f"{existing}; not replaced: pass --force to overwrite it, or choose another --out")
    data = build_css_data(config)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / PARTIAL_MARKER).write_text(json.dumps(asdict(config)) + "\n", encoding="utf-8")
    jobs = [(split, i, scene) for split in ("train", "test")
            for i, scene in enumerate(data[split]["objects_img"])]
    for split, i, scene in tqdm(jobs, desc="rendering CSS", unit="img", disable=not progress):
        render_scene(scene, config.image_size).save(image_path(out, split, i), optimize=False)
    for split in ("train", "test"):
        _remove_stale_images(out, split, len(data[split]["objects_img"]))
    tmp = out / f".{CSS_FILE}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "xb") as f:
            np.save(f, np.array(data, dtype=object), allow_pickle=True)  # TIRG's format; we only write it
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    (out / PARTIAL_MARKER).unlink(missing_ok=True)
    return npy


def _remove_stale_images(out: Path, split: str, count: int) -> None:
    """Delete images left beyond `count` by an earlier, larger generation into the same folder."""
    index = count
    while image_path(out, split, index).is_file():
        image_path(out, split, index).unlink()
        index += 1
