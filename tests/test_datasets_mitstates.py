"""MIT-States loader on a tiny fixture: folder layout and skip rules, the noun split, pairs, test-query enumeration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets import build_dataset
from cirlab.datasets.mitstates import TEST_NOUNS
from cirlab.utils.errors import CirlabError

FOLDERS = {
    # test nouns (fish, glass)
    "sliced fish": ["f1.jpg", "f2.jpg"], "fresh fish": ["f3.jpg"], "broken glass": ["g1.jpg"],
    "fresh glass": ["g2.jpg"],
    # train nouns
    "ripe apple": ["a1.jpg", "a2.jpg"], "rotten apple": ["a3.jpg"], "old car": ["c1.jpg"], "new car": ["c2.jpg"],
    "shiny car": ["c3.jpg"], "huge tree": ["t1.jpg"],
    # skipped by the protocol: no space, "adj <noun>", not two words
    "fish": ["x1.jpg"], "adj glass": ["x2.jpg"], "very old car": ["x3.jpg"],
}


def make_mitstates(root: Path) -> Path:
    for i, (folder, files) in enumerate(FOLDERS.items()):
        for name in files:
            path = root / "images" / folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(path, format="JPEG")
    (root / "images" / "sliced fish" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture()
def mit(tmp_path: Path) -> Path:
    return make_mitstates(tmp_path / "mit")


def test_the_49_test_nouns() -> None:
    assert len(TEST_NOUNS) == 49 and {"fish", "glass", "wool", "armor"} <= TEST_NOUNS and "apple" not in TEST_NOUNS


def test_layout_skip_rules_and_noun_split(mit: Path) -> None:
    test = build_dataset("mitstates", mit, "test")
    assert sorted(test.names) == ["broken glass/g1.jpg", "fresh fish/f3.jpg", "fresh glass/g2.jpg",
                                  "sliced fish/f1.jpg", "sliced fish/f2.jpg"]
    train = build_dataset("mitstates", mit, "train")
    assert set(train.nouns) == {"apple", "car", "tree"} and len(train) == 7


def test_test_queries_enumerate_every_other_adjective(mit: Path) -> None:
    ds = build_dataset("mitstates", mit, "test")
    (s,) = ds.eval_sets()
    got = sorted((ds.names[i], text) for i, text in zip(s.query_images, s.query_texts, strict=True))
    assert got == [("broken glass/g1.jpg", "fresh"), ("fresh fish/f3.jpg", "sliced"),
                   ("fresh glass/g2.jpg", "broken"), ("sliced fish/f1.jpg", "fresh"), ("sliced fish/f2.jpg", "fresh")]
    assert list(s.query_labels) == ["caption", "adj", "noun"] and s.ks == (1, 5, 10)
    assert s.exclude.tolist() == s.query_images  # gallery = all test images, query image excluded
    complete = build_dataset("mitstates", mit, "test", complete_text_query=True).eval_sets()[0]
    assert sorted(complete.query_texts) == ["broken glass", "fresh fish", "fresh fish", "fresh glass", "sliced fish"]


def test_independent_training_pairs_share_the_noun_and_change_the_adjective(mit: Path) -> None:
    ds = build_dataset("mitstates", mit, "train", sampling="independent")
    pairs = ds.sample_pairs(np.random.default_rng(0), 200)
    for p in pairs:
        assert ds.nouns[p.source] == ds.nouns[p.target] and ds.adjs[p.source] != ds.adjs[p.target]
        assert p.text == ds.adjs[p.target]
    assert "huge tree" not in {ds.captions[p.source] for p in pairs}  # tree has one adjective: no pair
    assert {ds.captions[p.target] for p in pairs} == {"ripe apple", "rotten apple", "old car", "new car", "shiny car"}
    assert ds.stats()["training_pairs"] == 9


def test_released_sampling_pairs_two_adjectives_on_one_source(mit: Path) -> None:
    """google/tirg: each source is drawn once and used twice in a row, with two different target adjectives
    of its noun (either may be the source's own)."""
    ds = build_dataset("mitstates", mit, "train")
    pairs = ds.sample_pairs(np.random.default_rng(0), 400)
    firsts, seconds = pairs[0::2], pairs[1::2]
    for a, b in zip(firsts, seconds, strict=True):
        assert a.source == b.source and a.text != b.text
        assert ds.nouns[a.target] == ds.nouns[b.target] == ds.nouns[a.source]
        assert a.text == ds.adjs[a.target] and b.text == ds.adjs[b.target]
    assert any(p.text == ds.adjs[p.source] for p in pairs)  # the release may keep the source's adjective
    assert len(ds.sample_pairs(np.random.default_rng(1), 5)) == 5  # an odd batch ends with a single query


def test_no_images_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "images" / "fish").mkdir(parents=True)
    with pytest.raises(CirlabError, match="no MIT-States test images under"):
        build_dataset("mitstates", tmp_path, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CirlabError, match="image folder not found"):
        build_dataset("mitstates", tmp_path / "empty", "test")
