"""The synthetic CSS generator: TIRG's on-disk format, exact texts, labels, novel split and rendering."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets.css_render import COLOR_RGB, COLORS, SHAPES, SIZES, render_scene
from cirlab.datasets.css_synth import (
    CELL_CENTRES,
    POSITIONS,
    CSSSynthConfig,
    apply_modification,
    describe_difference,
    generate_css,
    image_path,
    make_object,
    scene_signature,
)
from cirlab.utils.errors import CirlabError
from cirlab.utils.safe_pickle import load_pickled_npy

SMALL = CSSSynthConfig(seed=3, train_images=300, test_images=150)


def _same_scene(a: list[dict], b: list[dict]) -> bool:
    return scene_signature(a) == scene_signature(b)


def _load(npy: Path) -> dict:
    return load_pickled_npy(npy)


def _pairs(split: dict):
    for mod in split["mods"]:
        for src, tgt in zip(mod["from"], mod["to"], strict=True):
            yield src, tgt, mod["to_str"]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("css")
    return out, _load(generate_css(out, SMALL, progress=False))


def test_npy_has_tirg_css_structure_and_pngs_exist(generated):
    out, data = generated
    assert {"train", "test", "novel_combinations", "generator_config"} <= set(data)
    for split, count in (("train", SMALL.train_images), ("test", SMALL.test_images)):
        part = data[split]
        assert set(part) == {"objects_img", "mods", "labels"}
        assert len(part["objects_img"]) == len(part["labels"]) == count
        assert all(isinstance(label, int) for label in part["labels"])
        for objects in part["objects_img"]:
            assert 1 <= len(objects) <= SMALL.max_objects
            assert len({o["pos"] for o in objects}) == len(objects)
            for obj in objects:
                assert set(obj) == {"color", "shape", "size", "pos"}
                assert obj["color"] in COLORS and obj["shape"] in SHAPES and obj["size"] in SIZES
                assert isinstance(obj["pos"], tuple) and all(p in CELL_CENTRES for p in obj["pos"])
        texts = [mod["to_str"] for mod in part["mods"]]
        assert len(texts) == len(set(texts))
        for mod in part["mods"]:
            assert set(mod) == {"from", "to", "to_str"} and isinstance(mod["to_str"], str)
            assert len(mod["from"]) == len(mod["to"]) >= 1
            assert all(isinstance(i, int) and 0 <= i < count for i in mod["from"] + mod["to"])
        queries = sum(len(mod["from"]) for mod in part["mods"])
        assert 0.8 * count <= queries <= 0.9 * count
        for index in (0, count // 2, count - 1):
            with Image.open(image_path(out, split, index)) as img:
                assert img.size == (64, 64) and img.mode == "RGB"
    assert len(list((out / "images").glob("css_*.png"))) == SMALL.train_images + SMALL.test_images
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_every_pair_target_is_the_text_applied_to_the_source(generated):
    _, data = generated
    checked = 0
    for split in ("train", "test"):
        objects = data[split]["objects_img"]
        for src, tgt, text in _pairs(data[split]):
            assert _same_scene(apply_modification(objects[src], text), objects[tgt]), text
            checked += 1
    assert checked > 300


def test_all_kinds_of_modification_are_present(generated):
    _, data = generated
    texts = [mod["to_str"] for mod in data["train"]["mods"] + data["test"]["mods"]]
    kinds = Counter()
    for text in texts:
        words = text.split()
        if words[0] == "make":
            changed = "shape" if words[-2] == "a" else "color" if words[-1] in COLORS else "size"
            kinds[f"make-{changed}"] += 1
        elif words[0] == "remove":
            kinds["remove-at" if "at" in words else "remove"] += 1
        else:
            kinds[words[0]] += 1
    assert set(kinds) == {"add", "remove", "remove-at", "make-color", "make-size", "make-shape"}


def test_labels_equal_exactly_when_scenes_are_equal(generated):
    _, data = generated
    for split in ("train", "test"):
        signatures = [scene_signature(s) for s in data[split]["objects_img"]]
        label_of: dict = {}
        for signature, label in zip(signatures, data[split]["labels"], strict=True):
            assert label_of.setdefault(signature, label) == label
        assert len(set(label_of.values())) == len(label_of)
        assert len(label_of) < len(signatures)


def test_sources_have_two_different_texts_like_tirg_sampler_needs(generated):
    _, data = generated
    outgoing: dict[int, set[str]] = {}
    for src, _, text in _pairs(data["train"]):
        outgoing.setdefault(src, set()).add(text)
    assert outgoing and all(len(texts) >= 2 for texts in outgoing.values())


def test_novel_combinations_appear_only_in_test(generated):
    _, data = generated
    novel = set(data["novel_combinations"])
    assert len(novel) == round(len(COLORS) * len(SHAPES) / 3)
    train_combos = {f"{o['color']} {o['shape']}" for s in data["train"]["objects_img"] for o in s}
    assert not train_combos & novel
    assert {c.split()[0] for c in train_combos} == set(COLORS)
    assert {c.split()[1] for c in train_combos} == set(SHAPES)
    test_scenes = data["test"]["objects_img"]
    assert all(any(f"{o['color']} {o['shape']}" in novel for o in scene) for scene in test_scenes)


def test_generation_is_deterministic_for_a_seed(tmp_path):
    config = CSSSynthConfig(seed=11, train_images=40, test_images=20)
    first = generate_css(tmp_path / "a", config, progress=False)
    second = generate_css(tmp_path / "b", config, progress=False)
    other = generate_css(tmp_path / "c", CSSSynthConfig(seed=12, train_images=40, test_images=20),
                         progress=False)
    assert _load(first) == _load(second)
    assert _load(first)["train"] != _load(other)["train"]
    for index in range(20):
        path = Path("images") / f"css_test_{index:06d}.png"
        assert (tmp_path / "a" / path).read_bytes() == (tmp_path / "b" / path).read_bytes()


def test_generate_returns_early_only_when_the_config_matches(tmp_path):
    config = CSSSynthConfig(seed=5, train_images=14, test_images=7)
    npy = generate_css(tmp_path, config, progress=False)
    stamp = npy.stat().st_mtime_ns
    assert generate_css(tmp_path, config, progress=False) == npy and npy.stat().st_mtime_ns == stamp
    bigger = CSSSynthConfig(seed=5, train_images=21, test_images=7)
    with pytest.raises(CirlabError, match="other settings \\(train_images 14 -> 21\\); not replaced: pass --force"):
        generate_css(tmp_path, bigger, progress=False)
    assert npy.stat().st_mtime_ns == stamp
    generate_css(tmp_path, bigger, progress=False, force=True)
    assert _load(npy)["generator_config"]["train_images"] == 21
    generate_css(tmp_path, config, progress=False, force=True)
    assert len(_load(npy)["train"]["objects_img"]) == 14
    assert len(list((tmp_path / "images").glob("css_train_*.png"))) == 14


def test_an_interrupted_generation_continues_without_force(tmp_path, monkeypatch):
    import cirlab.datasets.css_synth as synth

    config = CSSSynthConfig(seed=5, train_images=14, test_images=7)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "_remove_stale_images", crash)  # after every image, before the .npy
    with pytest.raises(KeyboardInterrupt):
        generate_css(tmp_path, config, progress=False)
    assert (tmp_path / "images" / "css_test_000006.png").is_file() and not (tmp_path / synth.CSS_FILE).exists()
    monkeypatch.undo()
    generate_css(tmp_path, config, progress=False)
    assert len(_load(tmp_path / synth.CSS_FILE)["train"]["objects_img"]) == 14
    assert not (tmp_path / synth.PARTIAL_MARKER).exists()


def test_the_original_css3d_file_is_never_replaced_without_force(tmp_path):
    from test_datasets_css import original_css

    root = original_css(tmp_path / "css")
    before = (root / "css_toy_dataset_novel2_small.dup.npy").read_bytes()
    with pytest.raises(CirlabError, match="did not generate \\(e.g. the original CSS3D\\)"):
        generate_css(root, CSSSynthConfig(seed=5, train_images=14, test_images=7), progress=False)
    assert (root / "css_toy_dataset_novel2_small.dup.npy").read_bytes() == before


def test_pngs_show_tirg_colors_at_object_centres(generated):
    out, data = generated
    for split in ("train", "test"):
        for index in range(0, len(data[split]["objects_img"]), 7):
            pixels = np.asarray(Image.open(image_path(out, split, index)))
            assert tuple(pixels[0, 0]) == (255, 255, 255)
            for obj in data[split]["objects_img"][index]:
                y, x = (int(p * 64) for p in obj["pos"])
                assert tuple(pixels[y, x]) == COLOR_RGB[obj["color"]]


def test_render_matches_tirg_tables_and_scales_up():
    assert COLOR_RGB == {"gray": (87, 87, 87), "red": (244, 35, 35), "blue": (42, 75, 215),
                         "green": (29, 205, 20), "brown": (129, 74, 25), "purple": (129, 38, 192),
                         "cyan": (41, 208, 208), "yellow": (255, 238, 51)}
    rect = np.asarray(render_scene([make_object("red", "rectangle", "small", 0)]))
    ys, xs = np.nonzero((rect != 255).any(axis=2))
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (6, 13, 6, 13)
    large = np.asarray(render_scene([make_object("blue", "rectangle", "large", 4)]))
    assert int((large != 255).any(axis=2).sum()) == 16 * 16
    big = render_scene([make_object("green", "circle", "large", 4)], image_size=256)
    assert big.size == (256, 256) and big.mode == "RGB"
    pixels = np.asarray(big).astype(int)
    assert tuple(pixels[128, 128]) == COLOR_RGB["green"]
    edge_values = {tuple(p) for p in pixels[128, 90:110]}
    assert len(edge_values) > 2


def _random_scene(rng: np.random.Generator) -> list[dict]:
    cells = rng.choice(9, size=int(rng.integers(1, 6)), replace=False)
    return [make_object(str(rng.choice(COLORS)), str(rng.choice(SHAPES)), str(rng.choice(SIZES)), int(c))
            for c in cells]


def test_describe_difference_reaches_the_target():
    rng = np.random.default_rng(0)
    for _ in range(200):
        scene, target = _random_scene(rng), _random_scene(rng)
        for _step in range(3 * len(POSITIONS) + 1):
            text = describe_difference(scene, target)
            if text is None:
                break
            scene = apply_modification(scene, text)
            assert scene, "describe_difference emptied a scene on the way to a non-empty target"
        assert _same_scene(scene, target)
    assert describe_difference(target, target) is None


def test_apply_modification_parses_the_documented_forms():
    scene = [make_object("blue", "triangle", "small", 0), make_object("blue", "triangle", "large", 8),
             make_object("red", "circle", "small", 4)]
    added = apply_modification(scene, "add large red circle to top-right")
    assert _same_scene(added, [*scene, make_object("red", "circle", "large", 2)])
    assert _same_scene(apply_modification(scene, "remove red circle"), scene[:2])
    assert _same_scene(apply_modification(scene, "remove small blue triangle"), scene[1:])
    removed = apply_modification(scene, "remove blue triangle at bottom-right")
    assert _same_scene(removed, [scene[0], scene[2]])
    made = apply_modification(scene, "make middle-center object yellow")
    assert made[2]["color"] == "yellow" and scene[2]["color"] == "red"
    assert apply_modification(scene, "make bottom-right triangle small")[1]["size"] == "small"
    assert apply_modification(scene, "make top-left object a circle")[0]["shape"] == "circle"
    assert apply_modification(scene, "make middle-center red object blue")[2]["color"] == "blue"


@pytest.mark.parametrize("text", [
    "remove blue triangle",
    "remove green circle",
    "add small red circle to top-left",
    "add red circle to top-right",
    "make top-right object red",
    "make top-left rectangle large",
    "paint the top-left object red",
    "make top-left object shiny",
    "",
])
def test_apply_modification_rejects_texts_that_do_not_name_one_change(text):
    scene = [make_object("blue", "triangle", "small", 0), make_object("blue", "triangle", "large", 8)]
    with pytest.raises(ValueError):
        apply_modification(scene, text)


def test_positions_name_rows_then_columns():
    assert POSITIONS[0] == "top-left" and POSITIONS[5] == "middle-right" and POSITIONS[7] == "bottom-center"
    for cell, (row, col) in enumerate(itertools.product(range(3), range(3))):
        assert make_object("red", "circle", "small", cell)["pos"] == (CELL_CENTRES[row], CELL_CENTRES[col])
