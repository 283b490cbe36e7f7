"""The index `cirlab serve` uses without arguments: the demo's run over its test split, built on first use."""

from __future__ import annotations

from pathlib import Path

from cirlab.index import GalleryIndex, build_index, source_from_dataset
from cirlab.index.store import INDEX_FILE, weights_fingerprint
from cirlab.inference import load
from cirlab.models.folder import WEIGHTS_FILE
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json


def demo_index(demo_dir: str | Path = "runs/demo", progress: bool = True, device: str = "cpu") -> Path:
    """`demo_dir/index`, (re)built from `demo_dir/run` and its test split when missing or encoded by other weights."""
    demo_dir = Path(demo_dir)
    run_dir, index_dir = demo_dir / "run", demo_dir / "index"
    if not (run_dir / WEIGHTS_FILE).is_file():
        raise CirlabError(f"no INDEX_DIR given and no demo run in {run_dir}: run `cirlab demo` first, "
                          f"or `cirlab index RUN_DIR --split test --out INDEX_DIR` and pass INDEX_DIR")
    if (index_dir / INDEX_FILE).is_file():
        meta = read_json(index_dir / INDEX_FILE, "index file")
        if meta.get("run", {}).get("weights_sha256") == weights_fingerprint(run_dir):
            GalleryIndex.open(index_dir)
            return index_dir
    print(f"indexing the demo's test split into {index_dir} (once)", flush=True)
    pipe = load(run_dir, device=device)
    build_index(pipe, source_from_dataset(pipe.open_dataset("test")), index_dir, progress=progress)
    return index_dir
