"""FashionIQ loader on a tiny fixture in the release layout: splits, caption styles, galleries (ComposeAE's joint
gallery with hand-computed recalls), missing images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets import build_dataset
from cirlab.datasets.fashioniq import join_captions
from cirlab.evaluation import first_hit_ranks, score_eval_set
from cirlab.utils.errors import CirlabError

CATS = ("dress", "shirt", "toptee")


def png(path: Path, color: tuple[int, int, int] = (120, 120, 120), size: tuple[int, int] = (8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def write_json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4))


def image_file(root: Path, cat: str, name: str) -> Path:
    """Where the fixture stores an image: dress as images/*.png, shirt in resized_image/shirt/, toptee as .jpg."""
    if cat == "shirt":
        return root / "resized_image" / "shirt" / f"{name}.jpg"
    return root / "images" / (f"{name}.png" if cat == "dress" else f"{name}.jpg")


def make_fashioniq(root: Path, missing: tuple[str, ...] = (), val_images: int = 8) -> Path:
    """Per category: train split of 6 images / 3 triplets, val split of 8 images / 3 triplets, test split.

    Val triplets use images 0->1, 2->3, 4->1 (image 1 is a target twice); images 5-7 are in the split list
    only, so the `original` gallery has 8 images and `val-union` 5.
    """
    for c, cat in enumerate(CATS):
        for split, n in (("train", 6), ("val", val_images), ("test", 5)):
            names = [f"{cat[0].upper()}{split[:2]}{i:03d}" for i in range(n)]
            write_json(root / "image_splits" / f"split.{cat}.{split}.json", names)
            pairs = [(0, 1), (2, 3), (4, 1)]
            caps = [{"target": names[t], "candidate": names[s],
                     "captions": [f"is {cat} number {k}.", f"has pattern {k}"]} for k, (s, t) in enumerate(pairs)]
            if split == "test":
                caps = [{"candidate": names[s], "captions": ["is darker", "is longer"]} for s, _ in pairs]
            write_json(root / "captions" / f"cap.{cat}.{split}.json", caps)
            for i, name in enumerate(names):
                if name not in missing:
                    png(image_file(root, cat, name), (20 * i, 40 * c, 100))
    return root


@pytest.fixture()
def fiq(tmp_path: Path) -> Path:
    return make_fashioniq(tmp_path / "fiq")


def test_val_split_counts_and_both_image_layouts(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "val")
    sets = {s.name: s for s in ds.eval_sets()}
    assert list(sets) == list(CATS)
    for cat in CATS:
        s = sets[cat]
        assert s.num_queries == 3 and len(s.gallery_images) == 8
        assert all(ds.image_categories[i] == cat for i in s.gallery_images)
        assert ds.image_path(s.query_images[0]) == image_file(fiq, cat, f"{cat[0].upper()}va000")
    assert not ds.missing_mask().any()


def test_original_gallery_keeps_the_reference_and_val_union_excludes_it(fiq: Path) -> None:
    original = build_dataset("fashioniq", fiq, "val", categories="dress").eval_sets()[0]
    union = build_dataset("fashioniq", fiq, "val", categories="dress", gallery_protocol="val-union").eval_sets()[0]
    assert (original.exclude == -1).all()
    assert len(original.gallery_images) == 8
    names = lambda ds, s: [ds.image_name(i) for i in s.gallery_images]  # noqa: E731
    ds = build_dataset("fashioniq", fiq, "val", categories="dress", gallery_protocol="val-union")
    assert names(ds, union) == ["Dva000", "Dva001", "Dva002", "Dva003", "Dva004"]
    # each query's excluded position is its own reference
    assert [union.gallery_images[p] for p in union.exclude] == union.query_images
    # hit = the annotated target image (label = image index)
    targets = [union.gallery_images[int(np.nonzero(union.gallery_labels["target"] == lab)[0][0])]
               for lab in union.query_labels["target"]]
    assert [ds.image_name(t) for t in targets] == ["Dva001", "Dva003", "Dva001"]
    assert "gallery_protocol=val-union" in union.protocol and "gallery_protocol=original" in original.protocol


@pytest.mark.parametrize("style, expected", [
    ("clip4cir", "Is dress number 0 and has pattern 0"),
    ("composeae", "dress is dress number 0. and it has pattern 0"),
    ("crn", "<BOS> is dress number 0. <AND> has pattern 0 <EOS>"),
])
def test_caption_styles(fiq: Path, style: str, expected: str) -> None:
    s = build_dataset("fashioniq", fiq, "val", caption_style=style).eval_sets()[0]
    assert s.query_texts[0] == expected


def test_clip4cir_training_draws_both_orderings_and_is_a_function_of_the_rng(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "train")
    texts = {p.text for p in ds.sample_pairs(np.random.default_rng(0), 200)}
    assert "Is dress number 0 and has pattern 0" in texts and "Has pattern 0 and is dress number 0" in texts
    a = ds.sample_pairs(np.random.default_rng([3, 7]), 16)
    b = ds.sample_pairs(np.random.default_rng([3, 7]), 16)
    assert a == b
    assert len(ds.train_texts()) == 9  # 3 triplets x 3 categories
    crn = build_dataset("fashioniq", fiq, "train", caption_style="crn")
    assert {p.text.split(" <AND> ")[0] for p in crn.sample_pairs(np.random.default_rng(0), 50)} <= {
        f"<BOS> is {c} number {k}." for c in CATS for k in range(3)}


def test_one_category_training_uses_only_its_triplets(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "train", categories="shirt")
    pairs = ds.sample_pairs(np.random.default_rng(1), 30)
    assert {ds.image_categories[p.source] for p in pairs} == {"shirt"}
    assert len(ds.train_texts()) == 3


def test_summary_is_the_average_over_categories(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "val")
    per_set = {"dress": {"recall@10": 0.3, "recall@50": 0.6}, "shirt": {"recall@10": 0.2, "recall@50": 0.5},
               "toptee": {"recall@10": 0.4, "recall@50": 0.7}}
    out = ds.summarize(per_set)
    assert out["recall@10"] == pytest.approx(0.3) and out["recall@50"] == pytest.approx(0.6)
    assert out["recall_avg"] == pytest.approx(0.45)
    assert out["shirt_recall@50"] == 0.5


def test_missing_images_stop_with_paths_or_are_skipped_and_counted(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fashioniq(tmp_path / "fiq", missing=("Dva001", "Dva007"))
    with pytest.raises(CirlabError) as err:
        build_dataset("fashioniq", root, "val").eval_sets()
    message = str(err.value)
    assert "2 image(s) missing: 2 of 3 dress queries and 2 gallery image(s)" in message
    assert str(root / "images" / "Dva001.png") in message and "--skip-missing" in message
    sets = build_dataset("fashioniq", root, "val", skip_missing=True).eval_sets()
    dress = sets[0]
    assert dress.num_queries == 1 and len(dress.gallery_images) == 6
    assert "dropped (skip_missing)" in capsys.readouterr().err
    stats = build_dataset("fashioniq", root, "val").stats()
    assert stats["dress"]["missing_queries"] == 2 and stats["dress"]["missing_gallery"] == 2
    assert stats["missing_images"] == 2 and stats["queries"] == 9


def test_stats_per_category(fiq: Path) -> None:
    train = build_dataset("fashioniq", fiq, "train").stats()
    assert train["training_pairs"] == 9 and train["dress"]["training_pairs"] == 3
    val = build_dataset("fashioniq", fiq, "val", gallery_protocol="val-union").stats()
    assert val["shirt"]["gallery"] == 5 and val["gallery"] == 15 and val["queries"] == 9
    assert val["gallery_protocol"] == "val-union"


def test_test_split_has_no_targets(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "test")
    with pytest.raises(CirlabError, match="evaluate on --split val"):
        ds.eval_sets()
    assert ds.stats()["queries"] == 9


@pytest.mark.parametrize("content, needle", [
    ("[{\"candidate\": \"a\", \"target\": \"b\", \"captions\": [\"x\"]}]", "malformed entry 0 in .*cap.dress.val.json"),
    ("[{\"candidate\": \"a\", \"captions\": [\"x\", \"y\"]}]", "malformed entry 0 .*'target'"),
    ("[{\"candidate\": \"a\",", "malformed FashionIQ captions file .*cap.dress.val.json: line 1"),
    ("{\"candidate\": \"a\"}", "expected a list"),
])
def test_malformed_captions_name_the_file_and_entry(fiq: Path, content: str, needle: str) -> None:
    (fiq / "captions" / "cap.dress.val.json").write_text(content)
    with pytest.raises(CirlabError, match=needle):
        build_dataset("fashioniq", fiq, "val")


@pytest.mark.parametrize("options, needle", [
    ({"caption_style": "fancy"}, "caption_style must be one of clip4cir, composeae, crn"),
    ({"gallery_protocol": "all"}, "gallery_protocol must be one of original, val-union, joint"),
    ({"categories": "dress,skirt"}, "categories must be"),
    ({"colour": 1}, "unknown dataset option"),
    ({"skip_missing": "maybe"}, "skip_missing must be true or false"),
])
def test_bad_options_are_user_errors(fiq: Path, options: dict, needle: str) -> None:
    with pytest.raises(CirlabError, match=needle):
        build_dataset("fashioniq", fiq, "val", **options)


def test_join_captions_clip4cir_cleanup() -> None:
    assert join_captions("dress", " is RED. ", "longer?", "clip4cir") == "Is red and longer"
    assert join_captions("dress", " is RED. ", "longer?", "clip4cir", swap=True) == "Longer and is RED"
    assert join_captions("dress", " is RED. ", "longer?", "composeae") == "dress  is red.  and it longer?"
    assert join_captions("dress", "is RED", "longer", "composeae", single_category=True) == "is red longer"


def test_composeae_captions_default_to_the_joint_gallery(fiq: Path) -> None:
    ds = build_dataset("fashioniq", fiq, "val", caption_style="composeae")
    sets = ds.eval_sets()
    assert ds.gallery_protocol == "joint" and [s.name for s in sets] == list(CATS)
    assert all(s.gallery_images == sets[0].gallery_images for s in sets)  # one gallery for every category
    assert len(sets[0].gallery_images) == 24 and (sets[0].exclude == -1).all()
    assert "gallery_protocol=joint" in sets[0].protocol and "ComposeAE" in sets[0].protocol
    assert ds.stats()["gallery"] == 24 and ds.stats()["dress"]["gallery"] == 24
    assert sets[1].query_texts[0] == "shirt is shirt number 0. and it has pattern 0"
    assert build_dataset("fashioniq", fiq, "val").gallery_protocol == "original"
    assert build_dataset("fashioniq", fiq, "val", caption_style="composeae",
                         gallery_protocol="original").eval_sets()[0].gallery_images == ds.split_images["dress"]


def test_composeae_single_category_captions_and_gallery(fiq: Path) -> None:
    # datasets.py with cat_type='dress': captions joined by a space, no category word; gallery = the dress list
    (s,) = build_dataset("fashioniq", fiq, "val", categories="dress", caption_style="composeae").eval_sets()
    assert s.query_texts[0] == "is dress number 0. has pattern 0"
    assert len(s.gallery_images) == 8


def test_joint_gallery_deduplicates_names_and_hits_by_name(tmp_path: Path) -> None:
    from test_protocols import ranked_features  # imported here: test_protocols imports this module's builder

    root = make_fashioniq(tmp_path / "fiq")
    # the shirt list also names the dress image Dva003, and a 4th shirt query targets it
    write_json(root / "image_splits" / "split.shirt.val.json", [f"Sva{i:03d}" for i in range(8)] + ["Dva003"])
    caps = json.loads((root / "captions" / "cap.shirt.val.json").read_text())
    write_json(root / "captions" / "cap.shirt.val.json",
               caps + [{"target": "Dva003", "candidate": "Sva005", "captions": ["is blue", "is short"]}])
    ds = build_dataset("fashioniq", root, "val", caption_style="composeae")
    sets = {s.name: s for s in ds.eval_sets()}
    gallery = [ds.image_name(i) for i in sets["dress"].gallery_images]
    # 8 + 9 + 8 listed names, Dva003 once, in order of first listing (ComposeAE: all_imgs_from_cat, duplicates
    # filtered from the ranking)
    assert gallery == [f"{c}va{i:03d}" for c in "DST" for i in range(8)]
    pos = {name: p for p, name in enumerate(gallery)}
    # dress: query 0 ranks its reference Dva000 first (not excluded) and its target second -> rank 1;
    #   query 1 ranks its target Dva003 first -> 0; query 2 ranks 11 shirt images before Dva001 -> 11
    # shirt: the three listed queries rank their targets first; the 4th ranks the DRESS copy of Dva003 first,
    #   a hit by name -> ranks 0, 0, 0, 0
    # toptee: query 0 ranks its target first; queries 1 and 2 rank ten shirt images before theirs -> 0, 10, 10
    shirts = [pos[f"Sva{i:03d}"] for i in range(8)] + [pos[f"Tva00{i}"] for i in range(5, 8)]
    orders = {"dress": [[pos["Dva000"], pos["Dva001"]], [pos["Dva003"]], [*shirts, pos["Dva001"]]],
              "shirt": [[pos["Sva001"]], [pos["Sva003"]], [pos["Sva001"]], [pos["Dva003"]]],
              "toptee": [[pos["Tva001"]], [*shirts[:10], pos["Tva003"]], [*shirts[:10], pos["Tva001"]]]}
    expected_ranks = {"dress": [1, 0, 11], "shirt": [0, 0, 0, 0], "toptee": [0, 10, 10]}
    per_set = {}
    for name, s in sets.items():
        q, g = ranked_features(s, orders[name])
        ranks = first_hit_ranks(q, g, s.query_labels, s.gallery_labels, s.exclude)["target"]
        assert ranks.tolist() == expected_ranks[name], name
        per_set[name] = score_eval_set(s, q, g)
    # R@10: dress 2/3, shirt 1, toptee 1/3 -> average 2/3; R@50: 1 everywhere; recall_avg (2/3 + 1) / 2
    out = ds.summarize(per_set)
    assert out["dress_recall@10"] == pytest.approx(2 / 3) and out["toptee_recall@10"] == pytest.approx(1 / 3)
    assert out["recall@10"] == pytest.approx(2 / 3) and out["recall@50"] == 1.0
    assert out["recall_avg"] == pytest.approx(5 / 6)
