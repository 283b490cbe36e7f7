"""Index directories and searchers: exactness, FAISS recall, growing without re-encoding, atomic writes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _index_helpers import make_image_dir, make_tiny_run

from cirlab.cli.main import main
from cirlab.index import GalleryIndex, Query, Retriever, build_index, choose_kind, make_searcher
from cirlab.index import store as store_module
from cirlab.index.gallery import source_from_dataset, source_from_directory
from cirlab.training import load_run, open_dataset
from cirlab.utils.errors import CirlabError


@pytest.fixture(scope="module")
def tiny_run(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tiny_css, tmp_path_factory.mktemp("run") / "run")


def clustered(n: int, dim: int = 32, clusters: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(clusters, size=n)] + 0.4 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_searcher_is_brute_force_and_pads_when_k_exceeds_gallery() -> None:
    gallery, queries = clustered(50), clustered(4, seed=1)
    searcher = make_searcher("exact", 32)
    searcher.build(gallery)
    scores, positions = searcher.search(queries, 60)
    expected = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    assert positions.shape == (4, 60)
    np.testing.assert_array_equal(positions[:, :50], expected)
    assert (positions[:, 50:] == -1).all() and np.isneginf(scores[:, 50:]).all()


@pytest.mark.parametrize(("kind", "params"), [("ivfpq", {"nlist": 16, "pq_m": 16, "rerank": 30}), ("hnsw", {"m": 8})])
def test_faiss_searchers_find_the_exact_neighbours(kind: str, params: dict, tmp_path: Path) -> None:
    gallery, queries = clustered(3000), clustered(50, seed=1)
    truth = np.argsort(-(queries @ gallery.T), axis=1)[:, :10]
    searcher = make_searcher(kind, 32, params)
    searcher.build(gallery)
    searcher.save(tmp_path)
    reloaded = make_searcher(kind, 32, searcher.params)
    reloaded.load(tmp_path, gallery)
    _, found = reloaded.search(queries, 10)
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.95


def test_auto_kind_is_exact_for_small_and_ivfpq_for_large_galleries() -> None:
    assert choose_kind(1000) == "exact"
    assert choose_kind(5_000_000) == "ivfpq"
    assert choose_kind(10, "hnsw") == "hnsw"
    with pytest.raises(CirlabError, match="unknown index kind 'annoy'"):
        choose_kind(10, "annoy")


def test_split_index_matches_the_model_and_queries_exclude_their_reference(tiny_run: Path, tmp_path: Path) -> None:
    run = load_run(tiny_run)
    dataset = open_dataset(run.config, "test")
    summary = build_index(run, source_from_dataset(dataset), tmp_path / "index", progress=False)
    assert (summary.count, summary.added, summary.kind) == (len(dataset), len(dataset), "exact")
    index = GalleryIndex.open(tmp_path / "index")
    assert index.items[3].id == "css_test_000003" and Path(index.items[3].path).is_file()
    expected = run.embed_images([dataset.load_image(i) for i in range(5)]).numpy()
    np.testing.assert_allclose(index.vectors[:5], expected, atol=1e-5)

    retriever = Retriever.open(tmp_path / "index")
    hits = retriever.search([retriever.query_for_id("css_test_000003", "remove red circle")], 10)[0]
    assert len(hits) == 10 and "css_test_000003" not in [h.id for h in hits]
    assert [h.rank for h in hits] == list(range(1, 11))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    query = run.compose([dataset.load_image(3)], ["remove red circle"]).numpy()[0]
    assert hits[0].score == pytest.approx(float(index.vectors[index.position(hits[0].id)] @ query), abs=1e-5)


def test_add_encodes_only_new_images_and_keeps_old_vectors(tiny_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_run(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 6)
    build_index(run, source_from_directory(images), tmp_path / "index", kind="hnsw", params={"m": 4}, progress=False)
    before = GalleryIndex.open(tmp_path / "index")
    old_vectors = np.array(before.vectors)
    make_image_dir(images, 4, start=6)
    encoded: list[int] = []
    original = store_module.encode_into

    def counting(run_, source, out, batch_size, progress):  # noqa: ANN001, ANN202
        encoded.append(len(source))
        return original(run_, source, out, batch_size, progress)

    monkeypatch.setattr(store_module, "encode_into", counting)
    summary = build_index(run, source_from_directory(images), tmp_path / "index", add=True, progress=False)
    assert encoded == [4] and (summary.added, summary.skipped, summary.count) == (4, 6, 10)
    after = GalleryIndex.open(tmp_path / "index")
    assert after.kind == "hnsw" and after.searcher.index.ntotal == 10
    np.testing.assert_array_equal(after.vectors[:6], old_vectors)
    assert len({it.id for it in after.items}) == 10
    assert [it.id for it in after.items[:6]] == [it.id for it in before.items]
    # the grown FAISS index answers like brute force on these 10 vectors
    _, positions = after.searcher.search(np.array(after.vectors[:3]), 1)
    assert positions[:, 0].tolist() == [0, 1, 2]


def test_adding_can_switch_kind_from_the_stored_vectors(tiny_run: Path, tmp_path: Path) -> None:
    run = load_run(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 5)
    build_index(run, source_from_directory(images), tmp_path / "index", progress=False)
    make_image_dir(images, 2, start=5)
    summary = build_index(run, source_from_directory(images), tmp_path / "index", kind="hnsw", add=True,
                          progress=False)
    assert summary.kind == "hnsw" and summary.added == 2
    assert json.loads((tmp_path / "index" / "index.json").read_text())["kind"] == "hnsw"
    assert (tmp_path / "index" / "faiss.index").is_file()
    (tmp_path / "index" / "faiss.index").write_bytes(b"garbage")
    with pytest.raises(CirlabError, match="cannot read .*faiss.index"):
        GalleryIndex.open(tmp_path / "index")


def test_a_crash_mid_write_leaves_the_previous_index_intact(tiny_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    run = load_run(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 5)
    build_index(run, source_from_directory(images), tmp_path / "index", progress=False)
    files_before = {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()}
    make_image_dir(images, 3, start=5)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "encode_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(run, source_from_directory(images), tmp_path / "index", add=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()} == files_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "index"]  # no temporary directory left
    assert len(GalleryIndex.open(tmp_path / "index")) == 5


def test_uploaded_style_query_ranks_the_identical_gallery_image_first(tiny_run: Path, tmp_path: Path) -> None:
    run = load_run(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 8)
    build_index(run, source_from_directory(images), tmp_path / "index", progress=False)
    retriever = Retriever.open(tmp_path / "index")
    vectors = retriever.index.vectors
    # a composed query equal to a gallery vector must come back first with score 1
    scores, positions = retriever.index.searcher.search(np.array(vectors[4:5]), 1)
    assert positions[0, 0] == 4 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    hits = retriever.search([Query(retriever.reference_image(retriever.index.items[0].id), "add red cube")], 3)
    assert len(hits[0]) == 3


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("cirlab: error:")
    return lines[0]


def test_bad_index_input_is_one_line_naming_the_problem(tiny_run: Path, tiny_css: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "index")
    assert "run directory not found" in cli_error(["index", str(tmp_path / "nope"), "--split", "test", "--out", out],
                                                  capsys)
    (tmp_path / "empty").mkdir()
    assert "no image files" in cli_error(["index", str(tiny_run), "--images", str(tmp_path / "empty"), "--out", out],
                                         capsys)
    assert "no such directory" in cli_error(["index", str(tiny_run), "--images", str(tmp_path / "x"), "--out", out],
                                            capsys)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    assert "not a cirlab index" in cli_error(["index", str(tiny_run), "--split", "test", "--out",
                                              str(tmp_path / "precious")], capsys)
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    assert "no index at" in cli_error(["index", str(tiny_run), "--split", "test", "--out", out, "--add"], capsys)
    assert "unknown index kind" in cli_error(["index", str(tiny_run), "--split", "test", "--out", out, "--kind", "x"],
                                             capsys)
    bad = make_image_dir(tmp_path / "bad", 2)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert "broken.png" in cli_error(["index", str(tiny_run), "--images", str(bad), "--out", out], capsys)
    assert not Path(out).exists()


def test_add_refuses_an_index_encoded_by_other_weights(tiny_run: Path, tiny_css: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    images = make_image_dir(tmp_path / "imgs", 3)
    out = str(tmp_path / "index")
    assert main(["index", str(tiny_run), "--images", str(images), "--out", out, "--json"]) == 0
    capsys.readouterr()
    other = make_tiny_run(tiny_css, tmp_path / "other", seed=1)
    assert "other weights" in cli_error(["index", str(other), "--images", str(images), "--out", out, "--add"], capsys)


def test_damaged_index_files_are_reported_not_crashed_on(tiny_run: Path, tmp_path: Path) -> None:
    run = load_run(tiny_run)
    build_index(run, source_from_directory(make_image_dir(tmp_path / "imgs", 3)), tmp_path / "index", progress=False)
    np.save(tmp_path / "index" / "vectors.npy", np.zeros((2, 32), dtype=np.float32))
    with pytest.raises(CirlabError, match="rebuild it"):
        GalleryIndex.open(tmp_path / "index")
    np.save(tmp_path / "index" / "vectors.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CirlabError, match="cannot read index vectors"):
        GalleryIndex.open(tmp_path / "index")
    (tmp_path / "index" / "index.json").write_text("{broken")
    with pytest.raises(CirlabError, match="malformed index file"):
        GalleryIndex.open(tmp_path / "index")
    with pytest.raises(CirlabError, match="index directory not found"):
        GalleryIndex.open(tmp_path / "missing")


def test_query_checks_that_the_run_still_holds_the_indexed_weights(tiny_run: Path, tiny_css: Path,
                                                                  tmp_path: Path) -> None:
    run = load_run(tiny_run)
    build_index(run, source_from_directory(make_image_dir(tmp_path / "imgs", 3)), tmp_path / "index", progress=False)
    other = make_tiny_run(tiny_css, tmp_path / "other", seed=2)
    with pytest.raises(CirlabError, match="other weights"):
        Retriever.open(tmp_path / "index", other)
    assert torch.is_tensor(Retriever.open(tmp_path / "index").run.model.norm_scale)
