"""Fashion200k loader on a tiny fixture in the release layout: label files, escaping, parent-caption pairs, queries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets import build_dataset
from cirlab.datasets.fashion200k import escape_caption, parent_captions, replace_phrase
from cirlab.utils.errors import CirlabError

TRAIN = [("a1", "black silk dress"), ("a2", "black silk dress"), ("b1", "red silk dress"),
         ("c1", "black cotton dress"), ("d1", "blue jacket")]
TEST = [("t1", "black silk dress"), ("t2", "red silk dress"), ("t3", "red silk dress"),
        ("t4", "black & white dress."), ("t5", "blue silk dress")]
QUERIES = [("t1", "t2"), ("t4", "t1"), ("t5", "t3")]


def image_rel(name: str) -> str:
    return f"women/dresses/casual_and_day_dresses/{name}/{name}_0.jpeg"


def make_fashion200k(root: Path, missing: tuple[str, ...] = ()) -> Path:
    """Label files `dress_<split>_detect_all.txt` (path, score, caption), JPEGs, and `test_queries.txt`."""
    (root / "labels").mkdir(parents=True)
    for split, rows in (("train", TRAIN), ("test", TEST)):
        lines = [f"{image_rel(n)}\t0.{i + 5}\t{caption}\n" for i, (n, caption) in enumerate(rows)]
        (root / "labels" / f"dress_{split}_detect_all.txt").write_text("".join(lines))
        for i, (name, _) in enumerate(rows):
            if name not in missing:
                path = root / image_rel(name)
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (6, 9), (30 * i, 50, 90)).save(path, format="JPEG")
    (root / "test_queries.txt").write_text("".join(f"{image_rel(s)} {image_rel(t)}\n" for s, t in QUERIES))
    return root


@pytest.fixture()
def f200k(tmp_path: Path) -> Path:
    return make_fashion200k(tmp_path / "f200k")


def test_caption_escaping_and_label_files(f200k: Path) -> None:
    ds = build_dataset("fashion200k", f200k, "test")
    assert len(ds) == 5 and ds.captions[3] == "black andmark white dressdotmark"
    assert ds.image_path(0) == f200k / image_rel("t1")
    assert escape_caption(" a.b?c&d*e \n") == "adotmarkbquestionmarkcandmarkdstarmarke"


def test_replace_phrase_follows_tirg() -> None:
    assert replace_phrase("black silk dress", "red silk dress") == "replace black with red"
    # a side whose words all occur in the other contributes its last word (TIRG's loop variable)
    assert replace_phrase("silk dress", "black silk dress") == "replace dress with black"


def test_parent_captions_drop_one_word() -> None:
    assert parent_captions("black silk dress") == ["silk dress", "black dress", "black silk"]


def test_test_queries_texts_and_hits(f200k: Path) -> None:
    ds = build_dataset("fashion200k", f200k, "test")
    (s,) = ds.eval_sets()
    assert s.query_texts == ["replace black with red", "replace andmark with silk", "replace blue with red"]
    assert s.query_images == [0, 3, 4] and s.exclude.tolist() == [0, 3, 4]
    assert s.ks == (1, 10, 50)
    # caption equality: both red silk dresses (t2, t3) are hits for the first query
    hits = np.nonzero(s.gallery_labels["caption"] == s.query_labels["caption"][0])[0].tolist()
    assert hits == [1, 2]
    complete = build_dataset("fashion200k", f200k, "test", complete_text_query=True).eval_sets()[0]
    assert complete.query_texts == ["red silk dress", "black silk dress", "red silk dress"]
    assert "text = target caption" in complete.protocol


def test_parent_caption_training_pairs(f200k: Path) -> None:
    ds = build_dataset("fashion200k", f200k, "train")
    pairs = ds.sample_pairs(np.random.default_rng(0), 300)
    seen = {(ds.captions[p.source], p.text, ds.captions[p.target]) for p in pairs}
    assert seen == {
        ("black silk dress", "replace black with red", "red silk dress"),
        ("black silk dress", "replace silk with cotton", "black cotton dress"),
        ("red silk dress", "replace red with black", "black silk dress"),
        ("black cotton dress", "replace cotton with silk", "black silk dress"),
    }
    assert {p.target for p in pairs if ds.captions[p.target] == "black silk dress"} == {0, 1}
    assert ds.sample_pairs(np.random.default_rng([1, 2]), 8) == ds.sample_pairs(np.random.default_rng([1, 2]), 8)
    assert {"black silk dress", "replace with"} <= set(ds.train_texts())  # vocabulary: captions + phrase words
    complete = build_dataset("fashion200k", f200k, "train", complete_text_query=True)
    assert all(p.text == complete.captions[p.target] for p in complete.sample_pairs(np.random.default_rng(0), 20))


def test_stats(f200k: Path) -> None:
    train = build_dataset("fashion200k", f200k, "train").stats()
    assert train["training_pairs"] == 6 and train["modifiable_images"] == 4 and train["missing_images"] == 0
    test = build_dataset("fashion200k", f200k, "test").stats()
    assert (test["queries"], test["gallery"], test["missing_images"]) == (3, 5, 0)


def test_missing_images(tmp_path: Path) -> None:
    root = make_fashion200k(tmp_path / "f", missing=("t4", "b1"))
    with pytest.raises(CirlabError, match="t4_0.jpeg"):
        build_dataset("fashion200k", root, "test").eval_sets()
    (s,) = build_dataset("fashion200k", root, "test", skip_missing=True).eval_sets()
    assert s.num_queries == 2 and len(s.gallery_images) == 4
    with pytest.raises(CirlabError, match="b1_0.jpeg"):
        build_dataset("fashion200k", root, "train").sample_pairs(np.random.default_rng(0), 1)
    pairs = build_dataset("fashion200k", root, "train", skip_missing=True).sample_pairs(np.random.default_rng(0), 50)
    assert all(p.target != 2 and p.source != 2 for p in pairs)


def test_malformed_label_line_names_file_and_line(f200k: Path) -> None:
    path = f200k / "labels" / "dress_test_detect_all.txt"
    path.write_text(path.read_text() + "women/x.jpeg\t0.5\n")
    with pytest.raises(CirlabError, match=r"malformed line 6 in .*dress_test_detect_all.txt"):
        build_dataset("fashion200k", f200k, "test")


def test_unknown_query_path_names_the_line(f200k: Path) -> None:
    (f200k / "test_queries.txt").write_text(f"{image_rel('t1')} women/nope.jpeg\n")
    with pytest.raises(CirlabError, match="line 1 of .*test_queries.txt: women/nope.jpeg"):
        build_dataset("fashion200k", f200k, "test").eval_sets()
