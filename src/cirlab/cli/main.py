"""The `cirlab` command: every module in `cirlab.cli` that defines `register(subparsers)` adds a command.

User errors (CirlabError, bad flags) print one line and exit with status 2; Ctrl-C exits with 130.
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
        print(f"cirlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cirlab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
