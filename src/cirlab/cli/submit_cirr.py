"""`cirlab submit-cirr RUN_DIR --out DIR`: the two JSON files the CIRR test server accepts for test1.

`recall_submission_<name>.json` maps every pair id to the top-50 gallery image names and
`recall_subset_submission_<name>.json` to the top-3 names among the query's `img_set` members; both carry
`"version": "rc2"` and their `"metric"`. The reference image is never ranked. The server rejects files over
5 MB, so a larger file is refused here instead of being written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cirlab.cli._options import print_json_line
from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation import topk_chunked
from cirlab.evaluation.evaluator import encode_gallery, encode_queries
from cirlab.training import load_model, make_transform, open_dataset
from cirlab.training.trainer import resolve_device
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import write_text_atomic

VERSION = "rc2"
RECALL_TOP = 50
SUBSET_TOP = 3
MAX_BYTES = 5_000_000  # the CIRR server's 5 MB upload limit (decimal megabytes, the stricter reading)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit-cirr", help="write the CIRR test1 server files (recall and recall_subset)")
    p.add_argument("run_dir", type=Path, help="a run trained with --dataset cirr")
    p.add_argument("--out", type=Path, required=True, help="folder for the two JSON files")
    p.add_argument("--data-root", default=None, help="CIRR location, if it moved since training")
    p.add_argument("--split", default="test1", help="split to rank (default test1; val works for checking)")
    p.add_argument("--name", default="", help="suffix of the file names (recall_submission_<name>.json)")
    p.add_argument("--skip-missing", action="store_true", help="drop queries/gallery images that are missing")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, auto")
    p.add_argument("--force", action="store_true", help="replace submission files of the same names in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(handler=run)


def submission_rankings(eval_set: EvalSet, query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                        names: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Top-50 gallery names and top-3 `img_set` names per pair id (reference excluded from both).

    `names[g]` is the image name of gallery position g; `eval_set.exclude` holds each reference's position
    and `eval_set.candidates` the members of its `img_set` other than the reference.
    """
    if eval_set.query_ids is None or eval_set.candidates is None:
        raise CirlabError(f"eval set {eval_set.name!r} has no pair ids or img_set candidates; "
                          "submit-cirr needs the CIRR loader")
    _, top = topk_chunked(query_feats, gallery_feats, RECALL_TOP, eval_set.exclude)
    recall: dict[str, list[str]] = {}
    subset: dict[str, list[str]] = {}
    for q, pair_id in enumerate(eval_set.query_ids):
        recall[pair_id] = [names[int(g)] for g in top[q] if int(g) != int(eval_set.exclude[q])]
        cand = np.asarray(eval_set.candidates[q], dtype=np.int64)
        cand = cand[cand != eval_set.exclude[q]]
        scores = (gallery_feats[torch.as_tensor(cand)] @ query_feats[q]).numpy() if len(cand) else np.empty(0)
        order = np.argsort(-scores, kind="stable")[:SUBSET_TOP]
        subset[pair_id] = [names[int(cand[i])] for i in order]
    return recall, subset


def submission_text(metric: str, rankings: dict[str, list[str]]) -> str:
    """The server's format, compact: {"version": "rc2", "metric": ..., "<pairid>": [names], ...}."""
    return json.dumps({"version": VERSION, "metric": metric, **rankings}, separators=(",", ":"))


def check_size(path: Path, text: str) -> None:
    """Refuse (CirlabError) a submission the server would reject for its size."""
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise CirlabError(f"{path}: {size:,} bytes exceeds the CIRR server limit of {MAX_BYTES:,} bytes; "
                          "not written")


def write_submissions(files: dict[Path, str]) -> None:
    """Write the files atomically, and none of them if any is over the limit."""
    for path, text in files.items():
        check_size(path, text)
    for path, text in files.items():
        write_text_atomic(path, text)


def make_submission(model: torch.nn.Module, dataset: CIRDataset, transform: Any, batch_size: int = 128,
                    progress: bool = True) -> tuple[dict[str, list[str]], dict[str, list[str]], int]:
    """Rankings for every query of the dataset's (single) eval set, and the number of queries ranked."""
    sets = dataset.eval_sets()
    if len(sets) != 1:
        raise CirlabError(f"submit-cirr expects one eval set, {dataset.name} gives {len(sets)}")
    s = sets[0]
    gallery = encode_gallery(model, dataset, s.gallery_images, transform, batch_size, progress)
    queries = encode_queries(model, dataset, s.query_images, s.query_texts, transform, batch_size, progress)
    names = [dataset.image_name(i) for i in s.gallery_images]
    recall, subset = submission_rankings(s, queries, gallery, names)
    return recall, subset, s.num_queries


def output_paths(out: Path, name: str, force: bool) -> tuple[Path, Path]:
    """The two files to write; existing ones are refused (CirlabError) unless `force`, before any work is done."""
    suffix = f"_{name}" if name else ""
    paths = (out / f"recall_submission{suffix}.json", out / f"recall_subset_submission{suffix}.json")
    if out.exists() and not out.is_dir():
        raise CirlabError(f"--out {out} is a file, not a folder")
    clashes = [str(p) for p in paths if p.exists()]
    if clashes and not force:
        raise CirlabError(f"{', '.join(clashes)} already exist; pass --force to replace them, or another --out/--name")
    return paths


def run(args: argparse.Namespace) -> int:
    recall_path, subset_path = output_paths(args.out, args.name, args.force)
    model, config = load_model(args.run_dir)
    if config.dataset != "cirr":
        raise CirlabError(f"{args.run_dir} was trained on {config.dataset!r}; submit-cirr needs a CIRR run")
    model.to(resolve_device(args.device))
    if args.skip_missing:
        config.dataset_options = {**config.dataset_options, "skip_missing": True}
    dataset = open_dataset(config, args.split, args.data_root)
    total = len(dataset.queries)
    recall, subset, ranked = make_submission(model, dataset, make_transform(config, model, train=False),
                                             config.eval_batch_size, progress=not args.json)
    if ranked < total:
        print(f"cirlab: warning: {total - ranked} of {total} {args.split} queries were dropped for missing images; "
              "the server expects every pair id", file=sys.stderr)
    texts = {recall_path: submission_text("recall", recall), subset_path: submission_text("recall_subset", subset)}
    write_submissions(texts)
    files = [str(p) for p in texts]
    if args.json:
        print_json_line({"files": files, "queries": ranked, "split": args.split})
    else:
        print(f"{ranked} {args.split} queries ranked; wrote:\n  " + "\n  ".join(files))
    return 0
