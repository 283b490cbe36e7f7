"""The `cirlab` command: every module in `cirlab.cli` that defines `register(subparsers)` adds a command.

User errors (CirlabError, bad flags) and operating-system errors (a path under a file, a read-only or missing
folder, a full disk: any OSError) print one line, `cirlab: error: ...`, and exit with status 2; Ctrl-C exits with
130. Anything else is a bug in cirlab and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import NoReturn

import cirlab.cli
from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import apply_from_args, prepare_environment


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="cirlab", description="Composed image retrieval: train, evaluate, index, serve.")
    parser.add_argument("--version", action="version", version=f"cirlab {cirlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for info in sorted(pkgutil.iter_modules(cirlab.cli.__path__), key=lambda m: m.name):
        if info.name in ("main", "__main__") or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"cirlab.cli.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    prepare_environment()  # before a command imports torch: OpenMP reads how idle threads wait only once
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        apply_from_args(args)  # commands with --threads: torch's thread counts, printed once
        return int(args.handler(args) or 0)
    except CirlabError as exc:
        return error_line(str(exc))
    except OSError as exc:
        return error_line(os_error_message(exc))
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130


def os_error_message(exc: OSError) -> str:
    """`<what> (<path>)` for an OSError, e.g. "Not a directory (runs/file/out)"."""
    what = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{what} ({' -> '.join(paths)})" if paths else what


def error_line(message: str) -> int:
    """Print `cirlab: error: <message>` as exactly one line on stderr; returns the exit status 2."""
    print(f"cirlab: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
