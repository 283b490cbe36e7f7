"""`cirlab serve [INDEX_DIR]`: the JSON API and the web page over an index (default: the demo's gallery)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the search API and web page (default: the demo's run and gallery)")
    p.add_argument("index_dir", type=Path, nargs="?", default=None,
                   help="index directory (default: runs/demo/index, built from runs/demo/run on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--run", type=Path, default=None, help="run directory, if it moved since indexing")
    p.add_argument("--demo-dir", type=Path, default=Path("runs/demo"), help="where `cirlab demo` wrote its output")
    add_threads_argument(p)  # torch threads are set by cirlab.cli.main; FAISS gets the same count when given
    p.set_defaults(handler=run)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from cirlab.index import Retriever
    from cirlab.serving import create_app, demo_index

    if not 0 < args.port < 65536:
        raise CirlabError(f"--port must be in 1..65535, got {args.port}")
    if args.threads:
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    index_dir = args.index_dir if args.index_dir is not None else demo_index(args.demo_dir)
    retriever = Retriever.open(index_dir, args.run)
    allowed = {"localhost", "127.0.0.1", "::1", args.host} if is_loopback(args.host) else None
    if allowed is None:
        print(f"warning: binding {args.host}: the API is reachable from other machines (no authentication)")
    app = create_app(retriever, allowed_hosts=allowed)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {index_dir} ({len(retriever.index)} images, {retriever.index.kind}) at http://{shown}:{args.port}/",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
