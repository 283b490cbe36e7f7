"""A human-readable report of a trained run: `report.md`, a Recall@K bar chart and a grid of real retrievals.

Pictures are drawn with PIL alone (no plotting library is a dependency). The example grid shows, for a few
test queries, the reference image, the modification text and the top-5 results, each result framed green
when it is a hit under the dataset's protocol and red when it is not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation import drawing
from cirlab.evaluation.evaluator import encode_gallery, encode_queries
from cirlab.evaluation.recall import topk_chunked
from cirlab.training import LoadedRun
from cirlab.utils.io import write_text_atomic

HIT, MISS, INK, BAR = (30, 160, 60), (210, 50, 50), (30, 30, 30), (60, 110, 200)


def recall_bar_chart(metrics: dict[str, float], title: str, path: Path) -> Path:
    """A bar per Recall@K (percent), labelled with its value."""
    keys = [k for k in metrics if k.startswith("recall@")]
    width, height, margin = 120 + 90 * len(keys), 360, 50
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font, small = drawing.font(16), drawing.font(13)
    draw.text((margin, 12), title, fill=INK, font=font)
    base_y, top_y = height - margin, 60
    draw.line([(margin, base_y), (width - 20, base_y)], fill=INK, width=2)
    for pct in (0, 25, 50, 75, 100):
        y = base_y - (base_y - top_y) * pct / 100
        draw.line([(margin - 5, y), (width - 20, y)], fill=(225, 225, 225))
        draw.text((8, y - 7), f"{pct}%", fill=INK, font=small)
    for i, key in enumerate(keys):
        value = 100 * metrics[key]
        x0 = margin + 30 + 90 * i
        y0 = base_y - (base_y - top_y) * value / 100
        draw.rectangle([x0, y0, x0 + 50, base_y], fill=BAR)
        draw.text((x0, y0 - 18), f"{value:.1f}", fill=INK, font=small)
        draw.text((x0, base_y + 8), key.replace("recall", "R"), fill=INK, font=small)
    return drawing.save_png(img, path)


def _pick_queries(eval_set: EvalSet, count: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(eval_set.num_queries, size=min(count, eval_set.num_queries), replace=False).tolist())


def example_grid(run: LoadedRun, dataset: CIRDataset, path: Path, count: int = 6, top: int = 5, seed: int = 0,
                 progress: bool = False) -> Path:
    """Draw `count` test queries with their top-`top` retrievals (green frame: hit, red: miss)."""
    eval_set = dataset.eval_sets()[0]
    picked = _pick_queries(eval_set, count, seed)
    gallery = encode_gallery(run.model, dataset, eval_set.gallery_images, run.transform, progress=progress)
    queries = encode_queries(run.model, dataset, [eval_set.query_images[q] for q in picked],
                             [eval_set.query_texts[q] for q in picked], run.transform, progress=progress)
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


def write_report(out_dir: str | Path, run: LoadedRun, dataset: CIRDataset, result: dict[str, Any],
                 summary: dict[str, Any]) -> dict[str, Path]:
    """Write report.md, recall.png and examples.png into `out_dir`; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {k: v for k, v in result.items() if "recall" in k and isinstance(v, float)}
    cfg = run.config
    title = f"{cfg.model.name} on {cfg.dataset} ({result['split']}): Recall@K"
    chart = recall_bar_chart(metrics, title, out / "recall.png")
    torch.manual_seed(0)
    grid = example_grid(run, dataset, out / "examples.png")
    lines = [
        f"# cirlab report: {cfg.model.name} on {cfg.dataset}",
        "",
        f"- run directory: `{run.run_dir}`",
        f"- model: `{cfg.model.name}` (image encoder `{cfg.model.image_encoder}`, text encoder "
        f"`{cfg.model.text_encoder}`, {cfg.model.embed_dim}-d), loss `{cfg.loss}`",
        f"- training: {summary.get('iterations', '?')} iterations of batch {cfg.batch_size} in "
        f"{float(summary.get('train_seconds', 0)):.0f} s (lr {cfg.lr}, seed {cfg.seed})",
        f"- evaluation: {result['queries']} queries, gallery {result['gallery']}; protocol: {result['protocol']}",
        "",
        "## Recall@K (%)",
        "",
        recall_table(metrics),
        "",
        "![Recall@K](recall.png)",
        "",
        "## Example retrievals",
        "",
        "Reference image and text on the left, the top-5 results on the right: a green frame is a correct result "
        "(same caption as the target), a red frame a wrong one.",
        "",
        "![examples](examples.png)",
        "",
    ]
    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines))
    return {"report": report, "recall chart": chart, "examples": grid}
