"""Evaluation protocols with hand-computed expectations.

Each test takes the EvalSet a loader builds from a tiny fixture, gives the gallery one-hot features and each
query a score per gallery position chosen by hand (`ranked_features`), and checks the recalls the dataset-agnostic
evaluator then reports against numbers worked out in the comments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from test_datasets_cirr import make_cirr
from test_datasets_fashion200k import make_fashion200k
from test_datasets_fashioniq import make_fashioniq
from test_datasets_mitstates import make_mitstates

from cirlab.datasets import EvalSet, build_dataset
from cirlab.evaluation import first_hit_ranks, score_eval_set


def ranked_features(eval_set: EvalSet, orderings: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Gallery = identity; query q scores the gallery positions of `orderings[q]` 1.0, 0.99, ... and the rest 0."""
    gallery = torch.eye(len(eval_set.gallery_images))
    queries = torch.zeros(len(orderings), len(eval_set.gallery_images))
    for q, order in enumerate(orderings):
        for rank, position in enumerate(order):
            queries[q, position] = 1.0 - 0.01 * rank
    return queries, gallery


def test_query_exclusion_on_and_off_with_caption_equality_hits(tmp_path: Path) -> None:
    # Fashion200k test images t1..t5 = positions 0..4; captions: 0 black silk, 1 and 2 red silk, 3 black & white,
    # 4 blue silk. Queries: t1 -> red silk, t4 -> black silk, t5 -> red silk (annotated target t3 = position 2).
    ds = build_dataset("fashion200k", make_fashion200k(tmp_path / "f"), "test")
    (s,) = ds.eval_sets()
    # every query ranks its own image first; query 0 then t3 (same caption as its target t2, so a hit), query 1
    # the blue dress and then t1 (its target), query 2 then t2 (a hit by caption although t3 is annotated)
    q, g = ranked_features(s, [[0, 2], [3, 4, 0], [4, 1]])
    on = score_eval_set(s, q, g)  # query image excluded (TIRG): first-hit ranks 0, 1, 0
    assert on["recall@1"] == pytest.approx(2 / 3) and on["recall@10"] == 1.0
    off = score_eval_set(dataclasses.replace(s, exclude=np.full(3, -1)), q, g)  # not excluded: ranks 1, 2, 1
    assert off["recall@1"] == 0.0 and off["recall@10"] == 1.0


def test_fashioniq_original_keeps_the_reference_val_union_removes_it(tmp_path: Path) -> None:
    root = make_fashioniq(tmp_path / "fiq")
    for protocol, expected in (("original", [1, 1, 1]), ("val-union", [0, 0, 0])):
        ds = build_dataset("fashioniq", root, "val", categories="dress", gallery_protocol=protocol)
        (s,) = ds.eval_sets()
        position = {img: p for p, img in enumerate(s.gallery_images)}
        targets = [int(np.nonzero(s.gallery_labels["target"] == t)[0][0]) for t in s.query_labels["target"]]
        # each query ranks its reference first and its target second
        q, g = ranked_features(s, [[position[src], t] for src, t in zip(s.query_images, targets, strict=True)])
        ranks = first_hit_ranks(q, g, s.query_labels, s.gallery_labels, s.exclude)["target"]
        assert ranks.tolist() == expected, protocol


def test_cirr_recall_subset_ranks_within_the_five_remaining_members(tmp_path: Path) -> None:
    # val images 0..7. Query 0: reference 0, img_set {0..5} -> candidates 1..5, target 3.
    # Query 1: reference 4, img_set {4,5,6,7,0,1} -> candidates 5,6,7,0,1, target 5.
    (s,) = build_dataset("cirr", make_cirr(tmp_path / "c"), "val").eval_sets()
    # query 0: reference, two non-members 7 and 6 (7 is not in its set), member 1, then the target 3.
    #   global rank of 3 (reference removed) = 3; within candidates [1..5]: 1 then 3 -> rank 1
    # query 1: reference, then 2 (not a member), then the target 5: global rank 1, subset rank 0
    q, g = ranked_features(s, [[0, 7, 6, 1, 3], [4, 2, 5]])
    m = score_eval_set(s, q, g)
    assert (m["recall@1"], m["recall@5"], m["recall@10"], m["recall@50"]) == (0.0, 1.0, 1.0, 1.0)
    assert (m["recall_subset@1"], m["recall_subset@2"], m["recall_subset@3"]) == (0.5, 1.0, 1.0)


def test_fashioniq_headline_is_the_average_over_categories(tmp_path: Path) -> None:
    ds = build_dataset("fashioniq", make_fashioniq(tmp_path / "fiq", val_images=14), "val")
    # target first-hit ranks chosen per category: dress 0, 12, 5; shirt 0, 0, 0; toptee 11, 11, 11
    chosen = {"dress": [0, 12, 5], "shirt": [0, 0, 0], "toptee": [11, 11, 11]}
    per_set = {}
    for s in ds.eval_sets():
        orderings = []
        for q, rank in enumerate(chosen[s.name]):
            target = int(np.nonzero(s.gallery_labels["target"] == s.query_labels["target"][q])[0][0])
            orderings.append([p for p in range(len(s.gallery_images)) if p != target][:rank] + [target])
        per_set[s.name] = score_eval_set(s, *ranked_features(s, orderings))
    assert per_set["dress"] == {"recall@10": pytest.approx(2 / 3), "recall@50": 1.0}
    out = ds.summarize(per_set)
    assert out["recall@10"] == pytest.approx((2 / 3 + 1 + 0) / 3)  # 5/9
    assert out["recall@50"] == 1.0
    assert out["recall_avg"] == pytest.approx((5 / 9 + 1) / 2)
    assert out["toptee_recall@10"] == 0.0 and out["shirt_recall@10"] == 1.0


def test_mitstates_adjective_and_noun_recall(tmp_path: Path) -> None:
    ds = build_dataset("mitstates", make_mitstates(tmp_path / "m"), "test")
    (s,) = ds.eval_sets()
    assert s.gallery_images == list(range(len(ds)))  # gallery position = image index
    pos = {name: i for i, name in enumerate(ds.names)}
    bg, ff, fg, sf1, sf2 = (pos[n] for n in ("broken glass/g1.jpg", "fresh fish/f3.jpg", "fresh glass/g2.jpg",
                                             "sliced fish/f1.jpg", "sliced fish/f2.jpg"))
    plan = {
        # broken glass -> fresh glass: fresh fish (adj only), sliced fish (neither), then fresh glass
        (bg, "fresh"): [bg, ff, sf1, fg],
        (ff, "sliced"): [sf1],  # straight to the target
        (fg, "broken"): [bg],
        # sliced fish f1 -> fresh fish: sliced fish f2 (noun only), fresh glass (adj only), then fresh fish
        (sf1, "fresh"): [sf2, fg, ff],
        # sliced fish f2 -> fresh fish: fresh glass (adj only), then fresh fish
        (sf2, "fresh"): [fg, ff],
    }
    orderings = [plan[(img, text)] for img, text in zip(s.query_images, s.query_texts, strict=True)]
    m = score_eval_set(s, *ranked_features(s, orderings))
    # first-hit ranks in plan order: caption 2,0,0,2,1; adjective 0,0,0,1,0; noun 2,0,0,0,1
    assert m["recall@1"] == pytest.approx(2 / 5) and m["recall@5"] == 1.0
    assert m["adj_recall@1"] == pytest.approx(4 / 5) and m["adj_recall@5"] == 1.0
    assert m["noun_recall@1"] == pytest.approx(3 / 5) and m["noun_recall@5"] == 1.0
