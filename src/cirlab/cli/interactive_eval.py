"""`cirlab interactive-eval RUN_DIR`: multi-turn retrieval with a simulated user (CSS), success by turn."""

from __future__ import annotations

import argparse
from pathlib import Path

from cirlab.cli._device import add_device_argument
from cirlab.cli._options import print_json_line
from cirlab.utils.threads import add_threads_argument


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("interactive-eval",
                       help="simulate a user refining a CSS query turn by turn; success rate after each turn")
    p.add_argument("run_dir", type=Path, help="a run on a dataset that can simulate a user (CSS)")
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None, help="dataset location, if it moved since training")
    p.add_argument("--turns", type=int, default=5, help="turns T per episode")
    p.add_argument("-k", type=int, default=10, help="success = target in the top K")
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--min-steps", type=int, default=2, help="fewest edit steps between reference and target")
    p.add_argument("--max-steps", type=int, default=0, help="most edit steps (default: --turns)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="where to write interactive_eval.json/.png (default: the run directory)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    add_device_argument(p)
    add_threads_argument(p)
    p.set_defaults(handler=handle)


def handle(args: argparse.Namespace) -> int:
    from cirlab.evaluation.interactive import InteractiveConfig, format_table, interactive_eval
    from cirlab.evaluation.plots import success_curve_png
    from cirlab.inference import load
    from cirlab.utils.io import write_json_atomic

    config = InteractiveConfig(turns=args.turns, k=args.k, episodes=args.episodes, seed=args.seed,
                               min_steps=args.min_steps, max_steps=args.max_steps)
    config.validate()
    pipe = load(args.run_dir, device=args.device)
    dataset = pipe.open_dataset(args.split, args.data_root)
    result = interactive_eval(pipe, dataset, config, progress=not args.json)
    result["run"] = str(args.run_dir)
    out = args.out or args.run_dir
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "interactive_eval.json", result)
    png = success_curve_png(result, out / "interactive_eval.png")
    if args.json:
        print_json_line({k: v for k, v in result.items() if k != "examples"} | {"png": str(png)})
    else:
        print(format_table(result))
        print(f"wrote {out / 'interactive_eval.json'} and {png}")
    return 0
