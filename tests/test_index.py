"""Index directories and searchers: exactness, FAISS recall, growing without re-encoding, atomic writes, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _index_helpers import make_image_dir, make_tiny_run

from cirlab.cli.main import main
from cirlab.index import ComposedQuery, GalleryIndex, Retriever, build_index, choose_kind, make_searcher
from cirlab.index import store as store_module
from cirlab.index.gallery import GalleryItem, source_from_dataset, source_from_directory
from cirlab.inference import load
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
    pipe = load(tiny_run)
    dataset = pipe.open_dataset("test")
    summary = build_index(pipe, source_from_dataset(dataset), tmp_path / "index", progress=False)
    assert (summary.count, summary.added, summary.kind) == (len(dataset), len(dataset), "exact")
    index = GalleryIndex.open(tmp_path / "index")
    assert index.items[3].id == "css_test_000003" and Path(index.items[3].path).is_file()
    expected = pipe.embed([dataset.load_image(i) for i in range(5)]).numpy()
    np.testing.assert_allclose(index.vectors[:5], expected, atol=1e-5)

    retriever = Retriever.open(tmp_path / "index")
    hits = retriever.search([retriever.query_for_id("css_test_000003", "remove red circle")], 10)[0]
    assert len(hits) == 10 and "css_test_000003" not in [h.id for h in hits]
    assert [h.rank for h in hits] == list(range(1, 11))
    assert all(a.score >= b.score for a, b in zip(hits, hits[1:], strict=False))
    query = pipe.compose([dataset.load_image(3)], ["remove red circle"]).numpy()[0]
    assert hits[0].score == pytest.approx(float(index.vectors[index.position(hits[0].id)] @ query), abs=1e-5)


def test_add_encodes_only_new_images_and_keeps_old_vectors(tiny_run: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = load(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 6)
    build_index(pipe, source_from_directory(images), tmp_path / "index", kind="hnsw", params={"m": 4}, progress=False)
    before = GalleryIndex.open(tmp_path / "index")
    old_vectors = np.array(before.vectors)
    make_image_dir(images, 4, start=6)
    encoded: list[int] = []
    original = store_module.encode_into

    def counting(run_, source, out, batch_size, progress):  # noqa: ANN001, ANN202
        encoded.append(len(source))
        return original(run_, source, out, batch_size, progress)

    monkeypatch.setattr(store_module, "encode_into", counting)
    summary = build_index(pipe, source_from_directory(images), tmp_path / "index", add=True, progress=False)
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
    pipe = load(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 5)
    build_index(pipe, source_from_directory(images), tmp_path / "index", progress=False)
    make_image_dir(images, 2, start=5)
    summary = build_index(pipe, source_from_directory(images), tmp_path / "index", kind="hnsw", add=True,
                          progress=False)
    assert summary.kind == "hnsw" and summary.added == 2
    assert json.loads((tmp_path / "index" / "index.json").read_text())["kind"] == "hnsw"
    assert (tmp_path / "index" / "faiss.index").is_file()
    (tmp_path / "index" / "faiss.index").write_bytes(b"garbage")
    with pytest.raises(CirlabError, match="cannot read .*faiss.index"):
        GalleryIndex.open(tmp_path / "index")


def test_a_crash_mid_write_leaves_the_previous_index_intact(tiny_run: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = load(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 5)
    build_index(pipe, source_from_directory(images), tmp_path / "index", progress=False)
    files_before = {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()}
    make_image_dir(images, 3, start=5)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_module, "encode_into", crash)
    with pytest.raises(KeyboardInterrupt):
        build_index(pipe, source_from_directory(images), tmp_path / "index", add=True, progress=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "index").iterdir()} == files_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "index"]  # no temporary directory left
    assert len(GalleryIndex.open(tmp_path / "index")) == 5


def test_uploaded_style_query_ranks_the_identical_gallery_image_first(tiny_run: Path, tmp_path: Path) -> None:
    pipe = load(tiny_run)
    images = make_image_dir(tmp_path / "imgs", 8)
    build_index(pipe, source_from_directory(images), tmp_path / "index", progress=False)
    retriever = Retriever.open(tmp_path / "index")
    vectors = retriever.index.vectors
    # a composed query equal to a gallery vector must come back first with score 1
    scores, positions = retriever.index.searcher.search(np.array(vectors[4:5]), 1)
    assert positions[0, 0] == 4 and scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    hits = retriever.search([ComposedQuery(retriever.reference_image(retriever.index.items[0].id), "add red cube")], 3)
    assert len(hits[0]) == 3


def cli_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(args) == 2
    lines = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith("cirlab: error:")
    return lines[0]


def test_bad_index_input_is_one_line_naming_the_problem(tiny_run: Path, tiny_css: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "index")
    missing = cli_error(["index", str(tmp_path / "nope"), "--split", "test", "--out", out], capsys)
    assert "run directory or model folder not found" in missing
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
    pipe = load(tiny_run)
    build_index(pipe, source_from_directory(make_image_dir(tmp_path / "imgs", 3)), tmp_path / "index", progress=False)
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
    pipe = load(tiny_run)
    build_index(pipe, source_from_directory(make_image_dir(tmp_path / "imgs", 3)), tmp_path / "index", progress=False)
    other = make_tiny_run(tiny_css, tmp_path / "other", seed=2)
    with pytest.raises(CirlabError, match="other weights"):
        Retriever.open(tmp_path / "index", other)
    assert torch.is_tensor(Retriever.open(tmp_path / "index").pipeline.model.norm_scale)


# --- hardening: damaged indexes are refused on open, crash leftovers are cleaned, ties are broken one way ---


def small_index(tiny_run: Path, directory: Path, count: int = 4) -> Path:
    pipe = load(tiny_run)
    build_index(pipe, source_from_directory(make_image_dir(directory.parent / "imgs", count)), directory,
                progress=False)
    return directory


@pytest.mark.parametrize(("row_value", "message"), [
    (np.nan, "vectors.npy row 2 is not finite"),
    (np.inf, "vectors.npy row 2 is not finite"),
    (0.5, "vectors.npy row 2 has norm"),
])
def test_a_damaged_vector_row_is_refused_naming_the_file_and_row(tiny_run: Path, tmp_path: Path, row_value: float,
                                                                  message: str) -> None:
    index_dir = small_index(tiny_run, tmp_path / "index")
    vectors = np.load(index_dir / "vectors.npy")
    vectors[2] = vectors[2] * row_value if np.isfinite(row_value) else row_value
    np.save(index_dir / "vectors.npy", vectors)
    with pytest.raises(CirlabError, match=message) as info:
        GalleryIndex.open(index_dir)
    assert "\n" not in str(info.value)


def test_the_query_command_refuses_a_nan_row_instead_of_ranking_it_first(tiny_run: Path, tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    index_dir = small_index(tiny_run, tmp_path / "index")
    vectors = np.load(index_dir / "vectors.npy")
    vectors[1] = np.nan
    np.save(index_dir / "vectors.npy", vectors)
    line = cli_error(["query", str(index_dir), "--id", "img_001", "--text", "add red cube"], capsys)
    assert "vectors.npy row 1 is not finite" in line


def _edit_meta(index_dir: Path, edit) -> None:  # noqa: ANN001
    meta = json.loads((index_dir / "index.json").read_text())
    edit(meta)
    (index_dir / "index.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(dim="abc"), "field 'dim'"),
    (lambda m: m.update(dim=True), "field 'dim'"),
    (lambda m: m.update(dim=-3), "field 'dim'"),
    (lambda m: m.pop("run"), "field 'run'"),
    (lambda m: m.update(run="runs/x"), "field 'run'"),
    (lambda m: m["run"].pop("weights_sha256"), "field 'run.weights_sha256'"),
    (lambda m: m["run"].update(dir=7), "field 'run.dir'"),
    (lambda m: m.update(count="4"), "field 'count'"),
    (lambda m: m.update(count=5), "field 'count'"),
    (lambda m: m.update(kind=3), "field 'kind'"),
    (lambda m: m.update(params=[1, 2]), "field 'params'"),
    (lambda m: m.update(params={"nprobe": [1]}), "field 'params.nprobe'"),
    (lambda m: m.update(version="1"), "field 'version'"),
    (lambda m: m.update(requested_kind=None), "field 'requested_kind'"),
    (lambda m: m.update(sources="x"), "field 'sources'"),
    (lambda m: m.update(created=12), "field 'created'"),
])
def test_every_index_json_field_is_type_checked(tiny_run: Path, tmp_path: Path, edit, message: str) -> None:  # noqa: ANN001
    index_dir = small_index(tiny_run, tmp_path / "index")
    _edit_meta(index_dir, edit)
    with pytest.raises(CirlabError, match=message) as info:
        GalleryIndex.open(index_dir)
    assert "index.json" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(("items", "message"), [
    ([["img_000", 1]], "entry 0"),
    ([["../x", "/tmp/x.png"]], "entry 0"),
    ([["a", "/tmp/a.png"], ["a", "/tmp/b.png"]], "entry 1: duplicate id 'a'"),
    ({"a": "b"}, "expected a list"),
])
def test_items_json_is_validated(tiny_run: Path, tmp_path: Path, items: object, message: str) -> None:
    index_dir = small_index(tiny_run, tmp_path / "index")
    (index_dir / "items.json").write_text(json.dumps(items))
    with pytest.raises(CirlabError, match=message):
        GalleryIndex.open(index_dir)


@pytest.mark.parametrize("command", ["query", "serve"])
@pytest.mark.parametrize(("damage", "message"), [
    (lambda d: (d / "vectors.npy").write_bytes(b""), "vectors.npy"),
    (lambda d: _edit_meta(d, lambda m: m.update(dim="abc")), "field 'dim'"),
    (lambda d: _edit_meta(d, lambda m: m.pop("run")), "field 'run'"),
])
def test_query_and_serve_report_a_damaged_index_in_one_line(tiny_run: Path, tmp_path: Path, command: str, damage,  # noqa: ANN001
                                                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    index_dir = small_index(tiny_run, tmp_path / "index")
    damage(index_dir)
    args = [command, str(index_dir)]
    if command == "query":
        args += ["--id", "img_001", "--text", "add red cube"]
    else:
        args += ["--port", "1"]  # never reached: the index is checked before anything is bound
    line = cli_error(args, capsys)
    assert message in line


def test_a_killed_add_leaves_a_temporary_that_the_next_run_removes(tiny_run: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    images = make_image_dir(tmp_path / "imgs", 4)
    index_dir = tmp_path / "idx_add"
    build_index(load(tiny_run), source_from_directory(images), index_dir, progress=False)
    make_image_dir(images, 2, start=4)
    script = ("import os, signal, sys\n"
              "from cirlab.index import store\n"
              "from cirlab.index.gallery import source_from_directory\n"
              "from cirlab.inference import load\n"
              "store.encode_into = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
              "store.build_index(load(sys.argv[1]), source_from_directory(sys.argv[2]), sys.argv[3], add=True,"
              " progress=False)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tiny_run), str(images), str(index_dir)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -9, done.stderr
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".idx_add.tmp-")]
    assert len(leftovers) == 1  # what a kill leaves behind
    # the user's own files that merely look alike, and a temporary of a process that is still running, stay
    (tmp_path / ".idx_add.tmp-notes").write_text("mine")
    (tmp_path / ".idx_add.tmp-1-deadbeef").mkdir()
    (tmp_path / ".idx_add.tmp-1-deadbeef" / "thesis.tex").write_text("mine")
    summary = build_index(load(tiny_run), source_from_directory(images), index_dir, add=True, progress=False)
    assert summary.added == 2 and [p.name for p in summary.removed_stale] == leftovers
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".idx_add.tmp-1-deadbeef", ".idx_add.tmp-notes", "idx_add", "imgs"]
    assert (tmp_path / ".idx_add.tmp-1-deadbeef" / "thesis.tex").read_text() == "mine"


def test_tied_scores_rank_the_same_item_first_for_any_k() -> None:
    gallery = np.zeros((300, 32), dtype=np.float32)
    gallery[:, 0] = 1.0
    gallery[250:, :2] = [0.6, 0.8]  # a lower-scoring block after the ties
    searcher = make_searcher("exact", 32)
    searcher.build(gallery)
    query = gallery[:1].copy()
    first = {k: searcher.search(query, k)[1][0] for k in (1, 10, 100, 260)}
    assert {int(p[0]) for p in first.values()} == {0}
    np.testing.assert_array_equal(first[100], np.arange(100))  # score descending, then gallery position ascending
    np.testing.assert_array_equal(first[260], np.r_[np.arange(250), np.arange(250, 260)])


def test_faiss_results_are_ordered_by_score_then_position_and_do_not_depend_on_the_batch() -> None:
    base = clustered(1500)
    gallery = np.concatenate([base, np.repeat(base[:1], 5, axis=0)])  # 5 exact copies of row 0 at the end
    queries = np.concatenate([base[:1], clustered(7, seed=3)])
    for kind, params in (("ivfpq", {"nlist": 16, "pq_m": 16, "rerank": 30}), ("hnsw", {"m": 8})):
        searcher = make_searcher(kind, 32, params)
        searcher.build(gallery)
        scores, positions = searcher.search(queries[:1], 6)
        assert positions[0].tolist() == [0, 1500, 1501, 1502, 1503, 1504], kind
        assert searcher.search(queries[:1], 1)[1][0, 0] == 0
        items = [GalleryItem(f"g{i}", f"/g{i}.png") for i in range(len(gallery))]
        index = GalleryIndex(Path("."), {"kind": kind}, items, gallery, searcher)
        together = index.search(queries, [1, 40, 3, 3, 40, 1, 2, 3], [None, 4, None, None, None, None, 9, None])
        for q, (k, skip) in enumerate(zip([1, 40, 3, 3, 40, 1, 2, 3], [None, 4, None, None, None, None, 9, None],
                                          strict=True)):
            assert together[q] == index.search(queries[q:q + 1], k, [skip])[0], (kind, q)


def test_a_run_and_its_index_moved_together_keep_working(tiny_css: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    project = tmp_path / "project"
    run_dir = make_tiny_run(tiny_css, project / "run")
    images = make_image_dir(project / "images", 4)
    assert main(["index", str(run_dir), "--images", str(images), "--out", str(project / "index"), "--json"]) == 0
    meta = json.loads((project / "index" / "index.json").read_text())
    assert meta["run"]["dir"] == "../run"
    assert all(not Path(p).is_absolute() for _, p in json.loads((project / "index" / "items.json").read_text()))
    alone = tmp_path / "alone" / "index"  # the index alone moved away: its absolute path to the run finds it
    shutil.copytree(project / "index", alone)
    assert Retriever.open(alone).index.run_dir == (project / "run").absolute()
    moved = tmp_path / "moved" / "project"  # the whole folder moved: the relative paths find run and images
    shutil.move(str(project), moved)
    capsys.readouterr()
    assert main(["query", str(moved / "index"), "--id", "img_001", "--text", "red", "-k", "2", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["results"]
    assert len(hits) == 2 and all(Path(h["path"]).is_file() and moved in Path(h["path"]).parents for h in hits)
    assert Retriever.open(moved / "index").index.run_dir == (moved / "run").absolute()
