"""`cirlab recipes`: the shipped paper setups, with the paper each reproduces and where its settings come from."""

from __future__ import annotations

import argparse

from cirlab.cli._options import print_json_line
from cirlab.training.recipes import list_recipes, load_recipe


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list the shipped training recipes (cirlab train --recipe NAME)")
    p.add_argument("name", nargs="?", help="print one recipe's full configuration")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    if args.name:
        r = load_recipe(args.name)
        print_json_line({"name": r.name, "paper": r.paper, "source": r.source, "train": r.train})
        return 0
    recipes = [load_recipe(name) for name in list_recipes()]
    if args.json:
        print_json_line({r.name: {"paper": r.paper, "source": r.source} for r in recipes})
        return 0
    width = max(len(r.name) for r in recipes)
    for r in recipes:
        print(f"{r.name:<{width}}  {r.train['model']['name']:<20} {r.train['dataset']:<12} {r.paper}")
    return 0
