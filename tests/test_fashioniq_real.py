"""The FashionIQ loader on the real annotation files (`<repo>/../shared/data/fashion-iq`), with placeholder images.

The images of the release are not redistributable, so every name of the val split gets a tiny PNG whose colour
is derived from its name; the loader must then find exactly the published counts, and a full val evaluation
must run end to end with a tiny model.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config
from PIL import Image

from cirlab.datasets import build_dataset
from cirlab.datasets.transforms import Preprocess
from cirlab.evaluation import evaluate_dataset
from cirlab.inference import Pipeline
from cirlab.models import build_model

FIQ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fashion-iq"
pytestmark = pytest.mark.skipif(not (FIQ / "captions").is_dir(),
                                reason=f"real FashionIQ annotations not found at {FIQ}")

VAL_QUERIES = {"dress": 2017, "shirt": 2038, "toptee": 1961}  # published (Wu et al. 2021)
ORIGINAL_GALLERY = {"dress": 3817, "shirt": 6346, "toptee": 5373}  # published: split.<cat>.val.json sizes
TRAIN_PAIRS = {"dress": 5985, "shirt": 5988, "toptee": 6027}  # published


def placeholder_pngs(count: int = 16) -> list[bytes]:
    """A few distinct 4x4 PNG files, encoded once (writing ~15K images then costs only file creation)."""
    out = []
    for k in range(count):
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (16 * k, 255 - 16 * k, (97 * k) % 256)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def fiq_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real annotations (symlinked) plus a placeholder PNG for every val image name."""
    root = tmp_path_factory.mktemp("fiq_real")
    for sub in ("captions", "image_splits"):
        (root / sub).symlink_to(FIQ / sub, target_is_directory=True)
    images = root / "images"
    images.mkdir()
    pngs = placeholder_pngs()
    names: set[str] = set()
    for cat in VAL_QUERIES:
        names.update(json.loads((FIQ / "image_splits" / f"split.{cat}.val.json").read_text()))
    for name in names:
        (images / f"{name}.png").write_bytes(pngs[hashlib.md5(name.encode()).digest()[0] % len(pngs)])
    return root


def test_val_counts_match_the_published_ones(fiq_root: Path) -> None:
    ds = build_dataset("fashioniq", fiq_root, "val")
    sets = {s.name: s for s in ds.eval_sets()}
    assert {c: s.num_queries for c, s in sets.items()} == VAL_QUERIES
    assert {c: len(s.gallery_images) for c, s in sets.items()} == ORIGINAL_GALLERY
    assert all((s.exclude == -1).all() for s in sets.values())
    stats = ds.stats()
    assert stats["queries"] == sum(VAL_QUERIES.values()) and stats["missing_images"] == 0
    union = build_dataset("fashioniq", fiq_root, "val", gallery_protocol="val-union").eval_sets()
    for s in union:  # union of references and targets: smaller than the split list, reference excluded
        assert s.num_queries == VAL_QUERIES[s.name] and len(s.gallery_images) < ORIGINAL_GALLERY[s.name]
        assert (s.exclude >= 0).all()


def test_train_counts_and_missing_images_are_reported(fiq_root: Path) -> None:
    stats = build_dataset("fashioniq", fiq_root, "train").stats()
    assert {c: stats[c]["training_pairs"] for c in TRAIN_PAIRS} == TRAIN_PAIRS
    # no train image has a placeholder except those shared with val: every pair is reported, none crashes
    assert stats["missing_pairs"] > 0 and stats["missing_images"] > 0


def test_full_val_evaluation_runs_end_to_end(fiq_root: Path) -> None:
    torch.manual_seed(0)
    ds = build_dataset("fashioniq", fiq_root, "val")
    model = build_model(tiny_model_config("tirg", image_options={"width": 4}), texts=ds.train_texts()).eval()
    preprocess = Preprocess(size=16, mean=model.image_encoder.mean, std=model.image_encoder.std)
    result = evaluate_dataset(Pipeline(model, preprocess, batch_size=512), ds, progress=False)
    assert result["queries"] == sum(VAL_QUERIES.values())
    assert result["gallery"] == sum(ORIGINAL_GALLERY.values())
    metrics = result["metrics"]
    for cat in VAL_QUERIES:
        assert 0.0 <= metrics[f"{cat}_recall@10"] <= metrics[f"{cat}_recall@50"] <= 1.0
    mean10 = sum(metrics[f"{c}_recall@10"] for c in VAL_QUERIES) / 3
    assert metrics["recall@10"] == pytest.approx(mean10)
    assert metrics["recall_avg"] == pytest.approx((metrics["recall@10"] + metrics["recall@50"]) / 2)
    assert "gallery_protocol=original" in result["protocol"]
