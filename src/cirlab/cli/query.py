"""`cirlab query INDEX_DIR (--image PATH | --id ID) --text "..."`: ranked gallery ids, paths and scores."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.cli._options import print_json_line
from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("query", help="search an index with a reference image and a modification text")
    p.add_argument("index_dir", type=Path)
    ref = p.add_mutually_exclusive_group(required=True)
    ref.add_argument("--image", type=Path, help="reference image file")
    ref.add_argument("--id", help="reference gallery id (it is left out of its own results)")
    p.add_argument("--text", required=True, help="the change to make, e.g. \"make top-left object red\"")
    p.add_argument("-k", type=int, default=10, help="results to print (default 10)")
    p.add_argument("--run", type=Path, default=None, help="run directory, if it moved since indexing")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_device_argument(p)
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cirlab.datasets.base import load_rgb
    from cirlab.index import ComposedQuery, Retriever

    if args.k < 1:
        raise CirlabError(f"-k must be >= 1, got {args.k}")
    if not args.text.strip():
        raise CirlabError("--text is empty")
    retriever = Retriever.open(args.index_dir, args.run, device=args.device)
    query = retriever.query_for_id(args.id, args.text) if args.id else ComposedQuery(load_rgb(args.image), args.text)
    hits = retriever.search([query], args.k)[0]
    if args.json:
        print_json_line({"reference": args.id or str(args.image), "text": args.text,
                         "results": [{"rank": h.rank, "id": h.id, "path": h.path, "score": round(h.score, 6)}
                                     for h in hits]})
        return 0
    width = max([len(h.id) for h in hits] + [2])
    print(f"{'rank':>4}  {'score':>7}  {'id':<{width}}  path")
    for h in hits:
        print(f"{h.rank:>4}  {h.score:7.4f}  {h.id:<{width}}  {h.path}")
    return 0
