"""`cirlab submit-cirr RUN_DIR --out DIR`: the two JSON files the CIRR test server accepts for test1.

`recall_submission_<name>.json` and `recall_subset_submission_<name>.json`; the rankings and the server's
format and size limit are `cirlab.evaluation.cirr_submission`'s, this command parses arguments and writes files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.cli._options import print_json_line
from cirlab.evaluation.cirr_submission import check_size, rank_cirr_submission
from cirlab.inference import load
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import write_text_atomic


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit-cirr", help="write the CIRR test1 server files (recall and recall_subset)")
    p.add_argument("run_dir", type=Path, help="a run trained with --dataset cirr")
    p.add_argument("--out", type=Path, required=True, help="folder for the two JSON files")
    p.add_argument("--data-root", default=None, help="CIRR location, if it moved since training")
    p.add_argument("--split", default="test1", help="split to rank (default test1; val works for checking)")
    p.add_argument("--name", default="", help="suffix of the file names (recall_submission_<name>.json)")
    p.add_argument("--skip-missing", action="store_true", help="drop queries/gallery images that are missing")
    add_device_argument(p)
    p.add_argument("--force", action="store_true", help="replace submission files of the same names in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(handler=handle)


def write_submissions(files: dict[Path, str]) -> None:
    """Write the files atomically, and none of them if any is over the server's size limit."""
    for path, text in files.items():
        check_size(path, text)
    for path, text in files.items():
        write_text_atomic(path, text)


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


def handle(args: argparse.Namespace) -> int:
    recall_path, subset_path = output_paths(args.out, args.name, args.force)
    pipe = load(args.run_dir, device=args.device)
    if pipe.run is None or pipe.run.dataset != "cirr":
        trained_on = f"was trained on {pipe.run.dataset!r}" if pipe.run is not None else "is not a run directory"
        raise CirlabError(f"{args.run_dir} {trained_on}; submit-cirr needs a CIRR run")
    dataset = pipe.open_dataset(args.split, args.data_root, **({"skip_missing": True} if args.skip_missing else {}))
    total = len(dataset.queries)
    submission = rank_cirr_submission(pipe, dataset, progress=not args.json)
    ranked = submission.queries
    if ranked < total:
        print(f"cirlab: warning: {total - ranked} of {total} {args.split} queries were dropped for missing images; "
              "the server expects every pair id", file=sys.stderr)
    contents = submission.texts()
    texts = {recall_path: contents["recall"], subset_path: contents["recall_subset"]}
    write_submissions(texts)
    files = [str(p) for p in texts]
    if args.json:
        print_json_line({"files": files, "queries": ranked, "split": args.split})
    else:
        print(f"{ranked} {args.split} queries ranked; wrote:\n  " + "\n  ".join(files))
    return 0
