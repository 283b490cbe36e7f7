"""`cirlab index RUN_DIR (--split S | --images DIR) --out INDEX_DIR`: encode a gallery into an index directory."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.cli._options import parse_key_values, print_json_line
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="encode a gallery with a trained run into a searchable index directory")
    p.add_argument("run_dir", type=Path, help="trained run directory (or a model folder, with --images)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--split", help="index every image of this split of the run's dataset")
    what.add_argument("--images", type=Path, help="index every image file under this directory")
    p.add_argument("--out", type=Path, required=True, help="index directory to write (replaced atomically)")
    p.add_argument("--add", action="store_true",
                   help="add the images that are not indexed yet to the existing index (no re-encoding)")
    p.add_argument("--kind", default="auto",
                   help="exact, hnsw, ivfpq or auto (exact up to 50K images, else ivfpq)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="searcher parameter, e.g. nprobe=64, nlist=1024, m=16 (see docs/SERVING.md)")
    p.add_argument("--data-root", default=None, help="dataset location for --split, if it moved since training")
    p.add_argument("--batch-size", type=int, default=64)
    add_device_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cirlab.index import build_index, source_from_dataset, source_from_directory
    from cirlab.inference import load

    params = parse_key_values(args.param, "--param")
    pipe = load(args.run_dir, device=args.device)
    if args.split:
        source = source_from_dataset(pipe.open_dataset(args.split, args.data_root))
    else:
        source = source_from_directory(args.images)
    summary = build_index(pipe, source, args.out, kind=args.kind, params=params, add=args.add,
                          batch_size=args.batch_size, progress=not args.json)
    result = {"index": str(summary.directory), "count": summary.count, "added": summary.added,
              "already_indexed": summary.skipped, "kind": summary.kind, "seconds": round(summary.seconds, 2),
              "removed_stale": [str(p) for p in summary.removed_stale]}
    for path in summary.removed_stale:
        print(f"removed {path}, left behind by an interrupted earlier run", file=sys.stderr)
    if args.json:
        print_json_line(result)
    else:
        print(f"{summary.directory}: {summary.count} images ({summary.added} encoded, {summary.skipped} already "
              f"indexed), {summary.kind} search, {summary.seconds:.1f} s")
    return 0
