"""A human-readable report of a trained run: `report.md`, a Recall@K bar chart, the training curve and a grid
of real retrievals.

The charts are matplotlib's (`cirlab.evaluation.plots`); the example grid is composed with PIL: for a few test
queries, the reference image, the modification text and the top-5 results, each result framed green when it is
a hit under the dataset's protocol and red when it is not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation import drawing
from cirlab.evaluation.plots import recall_bar_chart, training_curve_png
from cirlab.evaluation.recall import topk_chunked
from cirlab.inference import Pipeline
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import write_text_atomic

HIT, MISS, INK = (30, 160, 60), (210, 50, 50), (30, 30, 30)


def _pick_queries(eval_set: EvalSet, count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eval_set.num_queries, size=min(count, eval_set.num_queries), replace=False).tolist())


def example_grid(pipe: Pipeline, dataset: CIRDataset, path: Path, count: int = 6, top: int = 5, seed: int = 0,
                 progress: bool = False) -> Path:
    """Draw `count` test queries with their top-`top` retrievals (green frame: hit, red: miss)."""
    eval_set = dataset.eval_sets()[0]
    picked = _pick_queries(eval_set, count, seed)
    gallery = pipe.embed_dataset(dataset, eval_set.gallery_images, progress=progress)
    queries = pipe.compose_dataset(dataset, [eval_set.query_images[q] for q in picked],
                                   [eval_set.query_texts[q] for q in picked], progress=progress)
    _, positions = topk_chunked(queries, gallery, top, exclude=eval_set.exclude[picked])
    primary = next(iter(eval_set.query_labels))
    q_labels, g_labels = eval_set.query_labels[primary], eval_set.gallery_labels[primary]
    cell, pad, text_h = 112, 10, 34
    width = pad + (cell + pad) * (top + 1) + 20
    height = 40 + len(picked) * (cell + text_h + pad)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = drawing.font(15), drawing.font(12)
    draw.text((pad, 10), f"reference | top-{top} results (green = correct, red = wrong)", fill=INK, font=font)
    for row, q in enumerate(picked):
        y = 40 + row * (cell + text_h + pad)
        draw.text((pad, y), f"\"{eval_set.query_texts[q]}\"", fill=INK, font=font)
        y += text_h - 12
        ref = dataset.load_image(eval_set.query_images[q]).resize((cell, cell))
        img.paste(ref, (pad, y))
        draw.rectangle([pad - 1, y - 1, pad + cell, y + cell], outline=INK, width=2)
        for col, pos in enumerate(positions[row].tolist()):
            x = pad + (cell + pad) * (col + 1) + 20
            hit = g_labels[pos] == q_labels[q]
            thumb = dataset.load_image(eval_set.gallery_images[pos]).resize((cell - 8, cell - 8))
            draw.rectangle([x, y, x + cell, y + cell], fill=HIT if hit else MISS)
            img.paste(thumb, (x + 4, y + 4))
            draw.text((x + 2, y + cell + 1), f"#{col + 1}", fill=INK, font=small)
    return drawing.save_png(img, path)


def recall_table(metrics: dict[str, float]) -> str:
    keys = [k for k in metrics if "recall" in k]
    head = "| " + " | ".join(keys) + " |"
    rule = "|" + "---|" * len(keys)
    row = "| " + " | ".join(f"{100 * metrics[k]:.2f}" for k in keys) + " |"
    return "\n".join([head, rule, row])


def training_section(history: Sequence[Mapping[str, Any]], split: str) -> list[str]:
    """The report's lines about `training.png`: what it shows, and whether evaluations were made during training."""
    evaluations = sum(isinstance(e.get("eval"), Mapping) for e in history)
    what = (f"with Recall@K on the {split} split at the {evaluations} evaluations made during training below it"
            if evaluations else "(no evaluation was made during training, so only the loss is drawn)")
    return ["## Training curve", "", f"Training loss against the iteration, {what}.", "",
            "![training curve](training.png)", ""]


def write_report(out_dir: str | Path, pipe: Pipeline, dataset: CIRDataset, result: dict[str, Any],
                 summary: dict[str, Any], history: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Path]:
    """Write report.md, recall.png, examples.png and, given the run's metrics.json `history`, training.png
    into `out_dir`; returns their paths. `pipe` is a loaded run directory (its train settings are reported)."""
    if pipe.run is None or pipe.directory is None:
        raise CirlabError("a report describes a trained run: load a run directory, not a bare model folder")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.items() if "recall" in k and isinstance(v, float)}
    model, run, train = pipe.model.config, pipe.run, pipe.run.train
    title = f"{model.name} on {run.dataset} ({result['split']}): Recall@K"
    paths = {"report": out / "report.md", "recall chart": recall_bar_chart(metrics, title, out / "recall.png")}
    if history is not None:
        paths["training curve"] = training_curve_png(history, out / "training.png",
                                                     f"{model.name} on {run.dataset}: training",
                                                     source=str(pipe.directory / "metrics.json"))
    torch.manual_seed(0)
    paths["examples"] = example_grid(pipe, dataset, out / "examples.png")
    lines = [
        f"# cirlab report: {model.name} on {run.dataset}",
        "",
        f"- run directory: `{pipe.directory}`",
        f"- model: `{model.name}` (image encoder `{model.image_encoder}`, text encoder "
        f"`{model.text_encoder}`, {model.embed_dim}-d), loss `{train.get('loss', '?')}`",
        f"- training: {summary.get('iterations', '?')} iterations of batch {train.get('batch_size', '?')} in "
        f"{float(summary.get('train_seconds', 0)):.0f} s (lr {train.get('lr', '?')}, seed {train.get('seed', '?')})",
        f"- evaluation: {result['queries']} queries, gallery {result['gallery']}; protocol: {result['protocol']}",
        "",
        "## Recall@K (%)",
        "",
        recall_table(metrics),
        "",
        "![Recall@K](recall.png)",
        "",
        *(training_section(history, run.eval_split) if history is not None else []),
        "## Example retrievals",
        "",
        "Reference image and text on the left, the top-5 results on the right: a green frame is a correct result "
        "(same caption as the target), a red frame a wrong one.",
        "",
        "![examples](examples.png)",
        "",
    ]
    write_text_atomic(paths["report"], "\n".join(lines))
    return paths
