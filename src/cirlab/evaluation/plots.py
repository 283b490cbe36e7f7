"""The reports' charts, drawn with matplotlib: Recall@K bars, success by turn, and the training curve.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg backend, so nothing needs a display
and pyplot's global state (and a user's chosen backend) is never touched. Every PNG is written atomically and
has a fixed pixel size (`SIZE`), so reports lay out the same way whatever the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cirlab.utils.errors import CirlabError
from cirlab.utils.io import atomic_path

#: Width and height of every chart in pixels (at `DPI`).
SIZE = (720, 440)
DPI = 100


def _figure() -> Figure:
    figure = Figure(figsize=(SIZE[0] / DPI, SIZE[1] / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> Path:
    """Write `figure` as a PNG of exactly `SIZE` pixels, atomically (a crash never leaves half a picture)."""
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def recall_bar_chart(metrics: Mapping[str, float], title: str, path: str | Path) -> Path:
    """A bar per primary Recall@K (percent), labelled with its value."""
    keys = [k for k in metrics if k.startswith("recall@")]
    if not keys:
        raise CirlabError(f"no recall@K figures to chart for {path} (got {', '.join(metrics) or 'none'})")
    values = [100 * float(metrics[k]) for k in keys]
    figure = _figure()
    axes = figure.add_subplot()
    bars = axes.bar([k.replace("recall", "R") for k in keys], values, width=0.6, color="#3c6ec8")
    axes.bar_label(bars, labels=[f"{v:.1f}" for v in values], padding=2)
    axes.set_ylim(0, 105)
    axes.set_ylabel("recall (%)")
    axes.set_title(title)
    axes.grid(axis="y", color="#e1e4ea")
    axes.set_axisbelow(True)
    return _save(figure, path)


def success_curve_png(result: Mapping[str, Any], path: str | Path) -> Path:
    """Success@K and success@1 of an interactive evaluation (`interactive_eval`'s result) against the turn."""
    rows = result["turns"]
    k = result["config"]["k"]
    turns = [r["turn"] for r in rows]
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(turns, [100 * r["success@k"] for r in rows], marker="o", color="#2f6fec", label=f"target in top {k}")
    axes.plot(turns, [100 * r["success@1"] for r in rows], marker="o", color="#e26826", label="target at rank 1")
    axes.set_xticks(turns)
    axes.set_ylim(-2, 102)
    axes.set_xlabel("turn")
    axes.set_ylabel("episodes (%)")
    axes.set_title(f"Interactive retrieval: success by turn ({result['episodes']} episodes)")
    axes.grid(color="#e4e7ec")
    axes.legend(loc="upper left")
    return _save(figure, path)


def training_curve_png(history: Sequence[Mapping[str, Any]], path: str | Path, title: str = "Training",
                       source: str = "history") -> Path:
    """Training loss, and the recall of the evaluations made during training, against the iteration.

    `history` is a run's `metrics.json` history: `{"iteration", "loss", ...}` entries every `log_every`
    iterations and `{"iteration", "eval": {metric: value}}` entries at each evaluation. A history without any
    loss is refused (CirlabError naming `source`): a curve with nothing on it would hide a broken run. Without
    evaluations only the loss is drawn."""
    losses = [(e["iteration"], e["loss"]) for e in history if isinstance(e, Mapping) and "loss" in e]
    if not losses:
        raise CirlabError(f"{source}: no training losses to plot (the history has {len(history)} entries, none "
                          "with a 'loss')")
    for iteration, loss in losses:
        if not isinstance(iteration, int) or not isinstance(loss, int | float) or not math.isfinite(loss):
            raise CirlabError(f"{source}: history entry at iteration {iteration!r} has no finite number as loss")
    evals = [(e["iteration"], e["eval"]) for e in history if isinstance(e, Mapping) and isinstance(e.get("eval"),
                                                                                                  Mapping)]
    figure = _figure()
    loss_axes = figure.add_subplot(2 if evals else 1, 1, 1)
    loss_axes.plot([i for i, _ in losses], [v for _, v in losses], color="#3c6ec8", linewidth=1.2)
    loss_axes.set_ylabel("training loss")
    loss_axes.set_title(title)
    loss_axes.grid(color="#e4e7ec")
    if evals:
        recall_axes = figure.add_subplot(2, 1, 2, sharex=loss_axes)
        keys = [k for k in evals[-1][1] if k.startswith("recall@")]
        for key in keys:
            points = [(i, 100 * m[key]) for i, m in evals if isinstance(m.get(key), int | float)]
            recall_axes.plot([i for i, _ in points], [v for _, v in points], marker="o", label=key)
        recall_axes.set_ylim(0, 102)
        recall_axes.set_ylabel("eval recall (%)")
        recall_axes.grid(color="#e4e7ec")
        recall_axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
        recall_axes.set_xlabel("iteration")
    else:
        loss_axes.set_xlabel("iteration")
    return _save(figure, path)
