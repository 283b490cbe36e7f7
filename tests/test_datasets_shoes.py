"""Shoes loader on a tiny fixture: caption file, name lists, `womens` image folders, missing and malformed input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets import build_dataset
from cirlab.utils.errors import CirlabError

TRAIN = [f"img_womens_boots_{i}.jpg" for i in range(1, 5)]
EVAL = [f"img_womens_pumps_{i}.jpg" for i in range(1, 6)]
CAPTIONS = [("img_womens_boots_1.jpg", "is taller", "img_womens_boots_2.jpg"),
            ("img_womens_boots_3.jpg", "is brown", "img_womens_boots_4.jpg"),
            ("img_womens_pumps_1.jpg", "has a higher heel", "img_womens_pumps_2.jpg"),
            ("img_womens_pumps_3.jpg", " is red ", "img_womens_pumps_4.jpg"),
            ("img_womens_pumps_5.jpg", "is open toed", "img_womens_pumps_1.jpg"),
            ("img_womens_boots_1.jpg", "crosses the split", "img_womens_pumps_1.jpg")]


def make_shoes(root: Path, missing: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True)
    (root / "relative_captions_shoes.json").write_text(json.dumps(
        [{"ImageName": t, "ReferenceImageName": s, "RelativeCaption": c} for s, c, t in CAPTIONS]))
    (root / "train_im_names.txt").write_text("\n".join(TRAIN) + "\n")
    (root / "eval_im_names.txt").write_text("\n".join(EVAL) + "\n")
    for i, name in enumerate(TRAIN + EVAL):
        if name in missing:
            continue
        folder = "womens_boots" if "boots" in name else "womens_pumps"
        path = root / folder / str(i % 2) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (10, 7), (20 * i, 10, 10)).save(path, format="JPEG")
    return root


@pytest.fixture()
def shoes(tmp_path: Path) -> Path:
    return make_shoes(tmp_path / "shoes")


def test_eval_split_queries_gallery_and_protocol(shoes: Path) -> None:
    ds = build_dataset("shoes", shoes, "test")
    (s,) = ds.eval_sets()
    assert ds.names == EVAL and s.gallery_images == [0, 1, 2, 3, 4]
    assert s.query_texts == ["has a higher heel", "is red", "is open toed"]  # the cross-split caption is not used
    assert s.query_images == [0, 2, 4] and s.exclude.tolist() == [0, 2, 4]
    assert s.query_labels["target"].tolist() == [1, 3, 0] and s.ks == (1, 10, 50)
    assert ds.image_path(0) == shoes / "womens_pumps" / "0" / "img_womens_pumps_1.jpg"


def test_training_pairs(shoes: Path) -> None:
    ds = build_dataset("shoes", shoes, "train")
    pairs = ds.sample_pairs(np.random.default_rng(0), 40)
    assert {(ds.names[p.source], p.text, ds.names[p.target]) for p in pairs} == {
        ("img_womens_boots_1.jpg", "is taller", "img_womens_boots_2.jpg"),
        ("img_womens_boots_3.jpg", "is brown", "img_womens_boots_4.jpg")}
    assert ds.stats() == {"training_pairs": 2, "queries": 0, "gallery": 0, "images": 4, "missing_images": 0,
                          "missing_pairs": 0}


def test_images_outside_womens_folders_count_as_missing(tmp_path: Path) -> None:
    root = make_shoes(tmp_path / "shoes", missing=("img_womens_pumps_4.jpg",))
    stray = root / "mens_shoes" / "0" / "img_womens_pumps_4.jpg"
    stray.parent.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(stray, format="JPEG")
    with pytest.raises(CirlabError, match="1 of 3 test queries and 1 gallery image"):
        build_dataset("shoes", root, "test").eval_sets()
    (s,) = build_dataset("shoes", root, "test", skip_missing=True).eval_sets()
    assert s.num_queries == 2 and len(s.gallery_images) == 4
    assert build_dataset("shoes", root, "test").stats()["missing_queries"] == 1


def test_malformed_caption_entry_names_file_and_entry(shoes: Path) -> None:
    (shoes / "relative_captions_shoes.json").write_text(json.dumps([{"ImageName": "a", "ReferenceImageName": "b"}]))
    with pytest.raises(CirlabError, match="malformed entry 0 in .*relative_captions_shoes.json: 'RelativeCaption'"):
        build_dataset("shoes", shoes, "test")
    (shoes / "eval_im_names.txt").unlink()
    with pytest.raises(CirlabError, match="Shoes name list not found: .*eval_im_names.txt"):
        build_dataset("shoes", shoes, "test")


def test_nothing_left_after_skipping_is_a_clear_error(tmp_path: Path) -> None:
    root = make_shoes(tmp_path / "shoes", missing=tuple(EVAL))
    with pytest.raises(CirlabError, match="shoes test: no usable queries or gallery images left"):
        build_dataset("shoes", root, "test", skip_missing=True).eval_sets()
