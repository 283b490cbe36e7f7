"""`cirlab serve [INDEX_DIR]`: the JSON API and the web page over an index (default: the demo's gallery)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import add_threads_argument

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the search API and web page (default: the demo's run and gallery)")
    p.add_argument("index_dir", type=Path, nargs="?", default=None,
                   help="index directory (default: runs/demo/index, built from runs/demo/run on first use)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name (or address) clients use to reach the server; repeatable. Needed with a "
                        "--host beyond loopback, where requests naming any other Host get 400")
    p.add_argument("--allow-any-host", action="store_true",
                   help="answer whatever the Host header says (no DNS-rebinding check; e.g. behind a proxy "
                        "that checks it)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="pixels an upload may decode to (default 2048 x 2048, see docs/SERVING.md)")
    p.add_argument("--read-timeout", type=float, default=None, metavar="SECONDS",
                   help="time a client may take to send its request head, and each next piece of its body "
                        "(default 10)")
    p.add_argument("--run", type=Path, default=None, help="run directory, if it moved since indexing")
    p.add_argument("--demo-dir", type=Path, default=Path("runs/demo"), help="where `cirlab demo` wrote its output")
    add_device_argument(p)
    add_threads_argument(p)  # torch threads are set by cirlab.cli.main; FAISS gets the same count when given
    p.set_defaults(handler=handle)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(args: argparse.Namespace) -> set[str] | None:
    """The Host names the server answers for (None: any), from --host, --allowed-host and --allow-any-host.

    Bound to loopback, the loopback names are enough. Bound further, the names clients will use must be given
    (or the check waived explicitly): silently answering any Host would let a web page reach the API through
    DNS rebinding.
    """
    from cirlab.serving.app import normalize_host_name

    if args.allow_any_host and args.allowed_host:
        raise CirlabError("--allowed-host and --allow-any-host: give one of them, not both")
    names = set()
    for name in args.allowed_host:
        normal = normalize_host_name(name)
        if normal is None:
            raise CirlabError(f"--allowed-host {name!r} is not a host name or IP address")
        names.add(normal)
    if args.allow_any_host:
        print("warning: --allow-any-host: requests naming any Host are answered (no DNS-rebinding check)")
        return None
    if not is_loopback(args.host):
        if not names:
            raise CirlabError(f"--host {args.host} makes the API reachable from other machines: name the host "
                              f"names clients will use with --allowed-host NAME (repeatable), or pass "
                              f"--allow-any-host to answer any Host header")
        print(f"warning: binding {args.host}: the API is reachable from other machines (no authentication)")
    bound = normalize_host_name(args.host)
    wildcard = args.host in ("0.0.0.0", "::")
    return {*LOOPBACK_NAMES, *names, *([bound] if bound and not wildcard else [])}


def handle(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise CirlabError(f"--port must be in 1..65535, got {args.port}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise CirlabError(f"--max-pixels must be >= 1, got {args.max_pixels}")
    if args.read_timeout is not None and not args.read_timeout > 0:
        raise CirlabError(f"--read-timeout must be > 0 seconds, got {args.read_timeout}")
    hosts = allowed_hosts(args)

    from cirlab.index import Retriever
    from cirlab.serving import Limits, create_app, demo_index
    from cirlab.serving.server import bind_socket, run_server

    if args.threads:
        try:
            import faiss

            faiss.omp_set_num_threads(args.threads)
        except ImportError:
            pass
    index_dir = args.index_dir if args.index_dir is not None else demo_index(args.demo_dir, device=args.device)
    retriever = Retriever.open(index_dir, args.run, device=args.device)
    sock = bind_socket(args.host, args.port)
    chosen = {"max_pixels": args.max_pixels, "read_timeout_s": args.read_timeout}
    limits = Limits(**{key: value for key, value in chosen.items() if value is not None})
    app = create_app(retriever, limits, allowed_hosts=hosts)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {index_dir} ({len(retriever.index)} images, {retriever.index.kind}) at http://{shown}:{args.port}/",
          flush=True)
    run_server(app, sock, limits.read_timeout_s)
    return 0
