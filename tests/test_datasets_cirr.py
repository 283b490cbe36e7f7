"""CIRR loader on a tiny rc2 fixture (captions, image splits, img_set) and the `cirlab submit-cirr` files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

from cirlab.cli.main import main
from cirlab.datasets import build_dataset
from cirlab.evaluation import cirr_submission
from cirlab.models import build_model
from cirlab.training.config import TrainConfig
from cirlab.training.run_dir import run_preprocess, save_run_model
from cirlab.utils.errors import CirlabError

DIRS = {"train": "train/{k}", "val": "dev", "test1": "test1"}
PREFIX = {"train": "train", "val": "dev", "test1": "test1"}


def names(split: str, n: int = 8) -> list[str]:
    return [f"{PREFIX[split]}-{i // 2}-{i % 2}-img{i % 2}" for i in range(n)]


def entry(split: str, pairid: int, ref: int, target: int, caption: str) -> dict:
    ns = names(split)
    members = [ns[(ref + j) % len(ns)] for j in range(6)]  # 6 members, the reference first
    e = {"pairid": pairid, "reference": ns[ref], "caption": caption,
         "img_set": {"id": pairid + 100, "members": members, "reference_rank": 0, "target_rank": 1}}
    if split != "test1":
        e |= {"target_hard": ns[target], "target_soft": {ns[target]: 1.0}}
    return e


def make_cirr(root: Path, missing: tuple[str, ...] = ()) -> Path:
    """The CIRR repository layout: `<root>/cirr/{captions,image_splits}` and images under train/, dev/, test1/."""
    for split in DIRS:
        ns = names(split)
        rel = {n: f"./{DIRS[split].format(k=i % 3)}/{n}.png" for i, n in enumerate(ns)}
        caps = [entry(split, 10 * len(split), 0, 3, "has two dogs instead of one"),
                entry(split, 10 * len(split) + 1, 4, 5, "show it from the left")]
        for sub, file, obj in (("image_splits", "split", rel), ("captions", "cap", caps)):
            path = root / "cirr" / sub / f"{file}.rc2.{split}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(obj))
        for i, (n, r) in enumerate(rel.items()):
            if n not in missing:
                path = root / r
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (9, 6), (25 * i, 60, 200)).save(path)
    return root


@pytest.fixture()
def cirr(tmp_path: Path) -> Path:
    return make_cirr(tmp_path / "cirr_data")


def test_layout_and_val_protocol(cirr: Path) -> None:
    ds = build_dataset("cirr", cirr, "val")
    assert (cirr / "cirr" / "image_splits" / "split.rc2.val.json").is_file()
    assert ds.image_path(0) == cirr / "dev" / "dev-0-0-img0.png"
    (s,) = ds.eval_sets()
    assert s.query_ids == ["30", "31"] and s.query_images == [0, 4] and s.exclude.tolist() == [0, 4]
    assert s.gallery_images == list(range(8)) and s.ks == (1, 5, 10, 50) and s.subset_ks == (1, 2, 3)
    # Recall_subset candidates: the img_set members minus the reference (5 of 6)
    assert [c.tolist() for c in s.candidates] == [[1, 2, 3, 4, 5], [5, 6, 7, 0, 1]]
    assert s.query_labels["target"].tolist() == [3, 5]


def test_train_pairs_and_nested_image_folders(cirr: Path) -> None:
    ds = build_dataset("cirr", cirr, "train")
    assert ds.image_path(1) == cirr / "train" / "1" / "train-0-1-img1.png"
    pairs = ds.sample_pairs(np.random.default_rng(0), 20)
    assert {(p.source, p.text, p.target) for p in pairs} == {(0, "has two dogs instead of one", 3),
                                                            (4, "show it from the left", 5)}
    assert type(ds).flip_ok is False  # captions say left/right


def test_test1_has_ids_and_candidates_but_no_targets(cirr: Path) -> None:
    (s,) = build_dataset("cirr", cirr, "test1").eval_sets()
    assert s.query_ids == ["50", "51"] and (s.query_labels["target"] == -1).all()
    assert "no public targets" in s.protocol
    with pytest.raises(CirlabError, match="test1 has no targets"):
        build_dataset("cirr", cirr, "test1").train_texts()


def test_missing_images_are_listed_or_skipped(tmp_path: Path) -> None:
    root = make_cirr(tmp_path / "c", missing=("dev-2-1-img1",))
    with pytest.raises(CirlabError, match=r"1 of 2 val queries and 1 gallery image.*dev-2-1-img1.png"):
        build_dataset("cirr", root, "val").eval_sets()
    (s,) = build_dataset("cirr", root, "val", skip_missing=True).eval_sets()
    assert s.num_queries == 1 and len(s.gallery_images) == 7
    assert s.candidates[0].tolist() == [1, 2, 3, 4]  # the missing member left the subset too
    stats = build_dataset("cirr", root, "val").stats()
    assert (stats["queries"], stats["gallery"], stats["missing_images"], stats["missing_queries"]) == (2, 8, 1, 1)


@pytest.mark.parametrize("bad, needle", [
    ({"img_set": {"members": "x"}}, "'img_set' must hold a 'members' list"),
    ({"reference": "nope"}, "image 'nope' is not in image_splits/split.rc2.val.json"),
    ({"pairid": None}, "'pairid' must be an integer"),
])
def test_malformed_entries_name_file_and_entry(cirr: Path, bad: dict, needle: str) -> None:
    path = cirr / "cirr" / "captions" / "cap.rc2.val.json"
    entries = json.loads(path.read_text())
    entries[1] |= bad
    path.write_text(json.dumps(entries))
    with pytest.raises(CirlabError, match=rf"malformed entry 1 .*in .*cap.rc2.val.json: .*{needle}"):
        build_dataset("cirr", cirr, "val")


def make_run(run_dir: Path, data_root: Path) -> None:
    torch.manual_seed(0)
    config = TrainConfig(dataset="cirr", data_root=str(data_root), eval_split="val", image_size=16,
                         model=tiny_model_config("tirg"))
    model = build_model(config.model, texts=["has two dogs instead of one", "show it from the left"]).eval()
    save_run_model(run_dir, config, model, run_preprocess(config, model))


def test_submit_cirr_writes_the_two_server_files(cirr: Path, tmp_path: Path) -> None:
    run, out = tmp_path / "run", tmp_path / "sub"
    make_run(run, cirr)
    assert main(["submit-cirr", str(run), "--out", str(out), "--name", "tiny"]) == 0
    recall = json.loads((out / "recall_submission_tiny.json").read_text())
    subset = json.loads((out / "recall_subset_submission_tiny.json").read_text())
    ns = names("test1")
    assert (recall.pop("version"), recall.pop("metric")) == ("rc2", "recall")
    assert (subset.pop("version"), subset.pop("metric")) == ("rc2", "recall_subset")
    assert set(recall) == set(subset) == {"50", "51"}
    refs = {"50": ns[0], "51": ns[4]}
    for pid, ranked in recall.items():
        assert len(ranked) == 7 and refs[pid] not in ranked and set(ranked) <= set(ns)  # 8 images minus reference
    members = {"50": ns[1:6], "51": [ns[5], ns[6], ns[7], ns[0], ns[1]]}
    for pid, top3 in subset.items():
        assert len(top3) == 3 and set(top3) <= set(members[pid])


def test_submit_cirr_refuses_files_over_the_size_limit(cirr: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    run, out = tmp_path / "run", tmp_path / "sub"
    make_run(run, cirr)
    monkeypatch.setattr(cirr_submission, "MAX_BYTES", 200)
    assert main(["submit-cirr", str(run), "--out", str(out)]) == 2
    assert "exceeds the CIRR server limit of 200 bytes; not written" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
