"""CSS loader on a file shaped like the original CSS3D release: a Python 2 pickle inside the .npy."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cirlab.datasets import build_dataset
from cirlab.datasets.css import CSS_FILE
from cirlab.utils.errors import CirlabError


class Py2StylePickler(pickle._Pickler):
    """Writes str and bytes the way Python 2 pickled its byte strings (BINSTRING), like TIRG's original file."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_byte_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = save_byte_string
    dispatch[bytes] = save_byte_string


def scene(color: str, shape: str, pos: tuple[float, float]) -> list[dict[str, Any]]:
    return [{"color": color, "shape": shape, "size": "large", "pos": pos}]


def original_css(root: Path) -> Path:
    """Two splits of three scenes; labels are an int64 array whose bytes are not ASCII (values >= 128)."""
    data = {}
    for split in ("train", "test"):
        data[split] = {
            "objects_img": [scene("red", "rectangle", (0.2, 0.2)), scene("blue", "circle", (0.5, 0.5)),
                            scene("red", "rectangle", (0.2, 0.2))],
            "labels": np.array([200, 201, 200], dtype=np.int64),
            "mods": [{"from": [0, 2], "to": [1, 1], "to_str": "make red object blue"},
                     {"from": [1], "to": [0], "to_str": "make blue object red"}],
        }
    root.mkdir(parents=True, exist_ok=True)
    with open(root / CSS_FILE, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        Py2StylePickler(fh, protocol=2).dump(np.array(data, dtype=object))
    return root


def test_reads_the_python2_css3d_file_and_renders_2d_scenes(tmp_path: Path) -> None:
    root = original_css(tmp_path / "css")
    with pytest.raises(UnicodeError, match="encoding"):  # what a plain np.load does with the original file
        np.load(root / CSS_FILE, allow_pickle=True).item()
    ds = build_dataset("css", root, "test")
    assert ds.render == "2d" and ds.load_image(0).size == (64, 64)
    assert ds.captions == ["200", "201", "200"]
    (s,) = ds.eval_sets()
    assert s.query_images == [0, 2, 1] and s.query_texts[2] == "make blue object red"
    assert s.exclude.tolist() == [0, 2, 1]
    # hit = caption equality: query 2 targets scene 0, whose caption "200" scene 2 shares
    assert (s.gallery_labels["caption"] == s.query_labels["caption"][2]).nonzero()[0].tolist() == [0, 2]
    assert ds.stats() == {"images": 3, "training_pairs": 3, "mods": 2, "queries": 3,
                         "gallery": 3, "missing_images": 0}
    pairs = build_dataset("css", root, "train").sample_pairs(np.random.default_rng(0), 10)
    assert {(p.source, p.target) for p in pairs} <= {(0, 1), (2, 1), (1, 0)}


def test_truncated_file_is_a_user_error(tmp_path: Path) -> None:
    root = original_css(tmp_path / "css")
    path = root / CSS_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CirlabError, match="cannot read CSS file"):
        build_dataset("css", root, "train")


def test_unknown_option_is_a_user_error(tmp_path: Path) -> None:
    root = original_css(tmp_path / "css")
    with pytest.raises(CirlabError,
                       match="unknown dataset option.*'colour'.*known: preload, render, sampling, skip_missing"):
        build_dataset("css", root, "test", colour="red")
    assert build_dataset("css", root, "test", skip_missing=True, preload="false").render == "2d"


def test_released_sampling_pairs_two_mods_of_one_source(tiny_css: Path) -> None:
    """google/tirg's CSS sampler: query 2k+1 reuses query 2k's source image with a different mod."""
    ds = build_dataset("css", tiny_css, "train")
    pairs = ds.sample_pairs(np.random.default_rng(0), 64)
    assert len(pairs) == 64
    shared = [(a, b) for a, b in zip(pairs[0::2], pairs[1::2], strict=True) if a.source == b.source]
    assert len(shared) == 32 and all(a.text != b.text for a, b in shared)
    pairs_of_mod = {(int(f), str(m["to_str"]), int(t))
                    for m in ds.mods for f, t in zip(m["from"], m["to"], strict=True)}
    assert all((p.source, p.text, p.target) in pairs_of_mod for p in pairs)
    independent = build_dataset("css", tiny_css, "train", sampling="independent").sample_pairs(
        np.random.default_rng(0), 64)
    assert sum(a.source == b.source for a, b in zip(independent[0::2], independent[1::2], strict=True)) < 8
    with pytest.raises(CirlabError, match="sampling must be one of paired, independent"):
        build_dataset("css", tiny_css, "train", sampling="pairs")


def save_object_npy(path: Path, obj: Any, protocol: int = 3) -> Path:
    """A pickled .npy the way np.save writes one (0-d object array), with a chosen pickle protocol."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(np.array(obj, dtype=object), fh, protocol=protocol)
    return path


def test_restricted_loader_reads_plain_data_and_numpy_1_names(tmp_path: Path) -> None:
    from cirlab.utils.safe_pickle import load_pickled_npy

    data = {"a": [1, 2.5, "x", None, True, (3, 4)], "pos": np.array([0.2, 0.8], dtype=np.float32),
            "labels": np.arange(3, dtype=np.int64), "s": np.float64(1.5), "b": b"raw"}
    path = save_object_npy(tmp_path / "d.npy", data, protocol=2)
    loaded = load_pickled_npy(path)
    assert loaded["a"] == data["a"] and loaded["labels"].tolist() == [0, 1, 2] and loaded["s"] == 1.5
    assert loaded["pos"].dtype == np.float32 and loaded["b"] == b"raw"
    # NumPy 1.x (and the original CSS3D file) spell the array constructor numpy.core.multiarray._reconstruct
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert load_pickled_npy(path)["labels"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("obj, needle", [
    ({"s": {1, 2}}, "it asks to call builtins.set"),
    ({"m": np.ma.masked_array([1, 2])}, "it asks to call numpy.ma.core._mareconstruct"),
    ({"r": np.zeros(2, dtype=[("x", "f4"), ("y", "i4")])}, "not plain data"),
    ({"e": CirlabError("x")}, "it asks to call cirlab.utils.errors.CirlabError"),
])
def test_restricted_loader_refuses_everything_else(obj: Any, needle: str, tmp_path: Path) -> None:
    from cirlab.utils.safe_pickle import load_pickled_npy

    path = save_object_npy(tmp_path / "d.npy", obj)
    with pytest.raises(CirlabError, match=f"refusing to load {path}") as info:
        load_pickled_npy(path)
    assert needle in str(info.value)


def test_plain_array_npy_is_not_a_css_file(tmp_path: Path) -> None:
    root = tmp_path / "css"
    root.mkdir()
    np.save(root / CSS_FILE, np.zeros((2, 2)))
    with pytest.raises(CirlabError, match="holds a plain float64 array of shape \\(2, 2\\), not a pickled dict"):
        build_dataset("css", root, "train")
