"""`cirlab data css` (generate the embedded CSS benchmark) and `cirlab data stats` (check a download)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from cirlab.cli._options import parse_key_values, print_json_line
from cirlab.datasets import DATASETS, build_dataset
from cirlab.datasets._common import ImageListDataset
from cirlab.utils.errors import CirlabError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="generate the synthetic CSS set, or count a dataset on disk")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True, parser_class=type(p))
    css = dsub.add_parser("css", help="generate the CSS-style benchmark in TIRG's CSS3D format")
    css.add_argument("--out", type=Path, required=True)
    css.add_argument("--seed", type=int, default=None)
    css.add_argument("--train-images", type=int, default=None)
    css.add_argument("--test-images", type=int, default=None)
    css.add_argument("--image-size", type=int, default=None)
    css.add_argument("--paper-scale", action="store_true", help="about 19K images and 16K queries per split")
    css.add_argument("--force", action="store_true",
                     help="replace a different CSS set already in --out (without it, that is refused; the same "
                          "settings are a no-op)")
    css.set_defaults(handler=handle_css)
    stats = dsub.add_parser("stats", help="pairs, queries, gallery and missing images per split")
    stats.add_argument("--dataset", required=True, help=f"one of {', '.join(DATASETS.names())}")
    stats.add_argument("--data-root", required=True)
    stats.add_argument("--split", action="append", help="split(s) to count (default: the dataset's)")
    stats.add_argument("--dataset-option", action="append", metavar="KEY=VALUE")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(handler=handle_stats)


def handle_css(args: argparse.Namespace) -> int:
    """Generate into --out; an identical set there is kept as it is, a different one is refused unless --force."""
    from cirlab.datasets.css_synth import PAPER_SCALE, CSSSynthConfig, existing_set, generate_css

    base = PAPER_SCALE if args.paper_scale else CSSSynthConfig()
    changes = {k: v for k, v in (("seed", args.seed), ("train_images", args.train_images),
                                 ("test_images", args.test_images), ("image_size", args.image_size)) if v is not None}
    for key in ("train_images", "test_images", "image_size"):
        if key in changes and changes[key] <= 0:
            raise CirlabError(f"--{key.replace('_', '-')} must be positive")
    config = dataclasses.replace(base, **changes)
    if args.out.is_dir() and existing_set(args.out, config) == "same":
        print(f"CSS benchmark already present with these settings, nothing rewritten: {args.out}")
        return 0
    path = generate_css(args.out, config, force=args.force)
    print(f"CSS benchmark written: {path}")
    return 0


def dataset_stats(name: str, root: str, splits: list[str] | None, options: dict[str, Any]) -> dict[str, Any]:
    cls = DATASETS.get(name)
    out: dict[str, Any] = {"dataset": name, "data_root": root, "splits": {}}
    for split in splits or list(cls.splits):
        dataset = build_dataset(name, root, split, **options)
        stats = dataset.stats()
        if isinstance(dataset, ImageListDataset) and stats.get("missing_images"):
            stats["first_missing"] = dataset.missing_examples(3)
        out["splits"][split] = stats
    return out


COLUMNS = (("training_pairs", "pairs"), ("queries", "queries"), ("gallery", "gallery"), ("images", "images"),
           ("missing_images", "missing img"), ("missing_pairs", "missing pairs"),
           ("missing_queries", "missing queries"), ("missing_gallery", "missing gallery"))


def stats_table(result: dict[str, Any]) -> str:
    """One row per split and per category (`split/category`), the count columns any row has, then notes."""
    rows: list[tuple[str, dict[str, Any]]] = []
    notes: list[str] = []
    for split, stats in result["splits"].items():
        rows.append((split, stats))
        rows += [(f"{split}/{k}", v) for k, v in stats.items() if isinstance(v, dict)]
        notes += [f"{split}: {k} = {', '.join(v) if isinstance(v, list) else v}" for k, v in stats.items()
                  if not isinstance(v, dict | int)]
    columns = [(key, title) for key, title in COLUMNS if any(key in r for _, r in rows)]
    header = ["split", *(title for _, title in columns)]
    body = [[name, *(str(r.get(key, "-")) for key, _ in columns)] for name, r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths,
                                                                                                     strict=True)))
             for line in [header, *body]]
    missing = sum(int(stats.get("missing_images", 0)) for stats in result["splits"].values())
    if missing:
        notes.append(f"{missing} image(s) missing: complete the download, or pass --skip-missing to train/eval "
                     "to drop the affected pairs, queries and gallery images")
    return "\n".join([f"{result['dataset']} at {result['data_root']}", *lines, *notes])


def handle_stats(args: argparse.Namespace) -> int:
    options = parse_key_values(args.dataset_option, "--dataset-option")
    result = dataset_stats(args.dataset, args.data_root, args.split, options)
    print(stats_table(result))
    if args.json:
        print_json_line(result)
    return 0
