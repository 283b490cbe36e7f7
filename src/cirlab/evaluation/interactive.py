"""Multi-turn interactive retrieval on CSS: a simulated user steers towards a hidden target, one change per turn.

On the synthetic CSS benchmark the difference between two scenes can be stated exactly, so a user can be
simulated: start from a reference image, say one difference between the current reference and the hidden
target in the generator's own words (`describe_difference`: "add ... / remove ... / make ..."), look at the
top-K results, and, if the target is not among them, take the best result as the next reference and repeat,
for up to T turns. Success after turn t is the share of episodes whose target (any image of the same scene)
reached the top-K by then. The seed papers motivate this loop but measure one turn only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from cirlab.datasets import CIRDataset
from cirlab.datasets.css_synth import apply_modification, describe_difference
from cirlab.evaluation import drawing
from cirlab.evaluation.evaluator import encode_gallery, encode_queries
from cirlab.evaluation.recall import topk_chunked
from cirlab.training import LoadedRun
from cirlab.utils.errors import CirlabError

Scene = Sequence[Mapping[str, Any]]


@dataclass
class InteractiveConfig:
    """The simulated user: turns T, success cut-off K, episodes, and how far targets are from references."""

    turns: int = 5
    k: int = 10
    episodes: int = 500
    seed: int = 0
    min_steps: int = 2
    max_steps: int = 0  # 0: the number of turns (targets reachable by a perfect system in T turns)

    def validate(self) -> None:
        if self.turns < 1 or self.k < 1 or self.episodes < 1:
            raise CirlabError("--turns, --k and --episodes must be >= 1")
        if self.min_steps < 1 or (self.max_steps and self.max_steps < self.min_steps):
            raise CirlabError("need 1 <= --min-steps <= --max-steps")


def steps_between(source: Scene, target: Scene, limit: int = 50) -> int:
    """How many single-difference texts take `source` to `target` (the simulated user's path length)."""
    current, steps = list(source), 0
    while (text := describe_difference(current, target)) is not None:
        current = apply_modification(current, text)
        steps += 1
        if steps > limit:
            raise CirlabError("describe_difference did not converge; are these scenes from `cirlab data css`?")
    return steps


def sample_episodes(dataset: CIRDataset, config: InteractiveConfig) -> list[tuple[int, int, int]]:
    """(reference, target, steps) triples with min_steps <= steps <= max_steps, drawn with `config.seed`."""
    objects = _scenes(dataset)
    labels = np.asarray(dataset.labels)
    high = config.max_steps or config.turns
    rng = np.random.default_rng(config.seed)
    chosen: dict[tuple[int, int], int] = {}
    for _ in range(config.episodes * 200):
        if len(chosen) == config.episodes:
            break
        ref, tgt = (int(x) for x in rng.integers(len(objects), size=2))
        if labels[ref] == labels[tgt] or (ref, tgt) in chosen:
            continue
        steps = steps_between(objects[ref], objects[tgt])
        if config.min_steps <= steps <= high:
            chosen[(ref, tgt)] = steps
    if not chosen:
        raise CirlabError(f"no (reference, target) pair of {dataset.split} is {config.min_steps}-{high} steps apart")
    return [(r, t, s) for (r, t), s in chosen.items()]


def _scenes(dataset: CIRDataset) -> list[Scene]:
    objects = getattr(dataset, "objects", None)
    if objects is None or not hasattr(dataset, "labels"):
        raise CirlabError(f"interactive-eval needs CSS scenes (dataset {dataset.name!r} has no scene descriptions)")
    try:
        describe_difference(objects[0], objects[-1])
    except (ValueError, KeyError):
        raise CirlabError("interactive-eval needs scenes from `cirlab data css` (one object per grid cell, "
                          "with sizes); this CSS file has other scenes") from None
    return objects


@torch.no_grad()
def interactive_eval(run: LoadedRun, dataset: CIRDataset, config: InteractiveConfig, progress: bool = True
                     ) -> dict[str, Any]:
    """Simulate the episodes; per turn: success@K so far, success@1 so far (the target was at rank 1 on the turn
    it entered the top K, where the user stops), and the mean steps still separating reference and target
    (0 once found). Turn 0 is the starting point (nothing found, initial distances)."""
    config.validate()
    objects = _scenes(dataset)
    labels = np.asarray(dataset.labels)
    episodes = sample_episodes(dataset, config)
    gallery = encode_gallery(run.model, dataset, list(range(len(dataset))), run.transform, progress=progress)
    current = [r for r, _, _ in episodes]
    targets = [t for _, t, _ in episodes]
    found_k: list[int | None] = [None] * len(episodes)
    found_1: list[int | None] = [None] * len(episodes)
    left = [s for _, _, s in episodes]
    rows = [{"turn": 0, "success@k": 0.0, "success@1": 0.0, "mean_steps_left": float(np.mean(left))}]
    examples: list[list[dict[str, Any]]] = [[] for _ in episodes]
    for turn in range(1, config.turns + 1):
        active = [e for e in range(len(episodes)) if found_k[e] is None]
        if active:
            texts = [describe_difference(objects[current[e]], objects[targets[e]]) for e in active]
            queries = encode_queries(run.model, dataset, [current[e] for e in active], texts, run.transform,
                                     progress=False)
            exclude = np.array([current[e] for e in active], dtype=np.int64)
            _, top = topk_chunked(queries, gallery, config.k, exclude=exclude)
            for row, e in enumerate(active):
                ranked = top[row].tolist()
                hits = [i for i, p in enumerate(ranked) if labels[p] == labels[targets[e]]]
                examples[e].append({"reference": current[e], "text": texts[row], "top1": ranked[0],
                                    "target_rank": hits[0] + 1 if hits else None})
                if hits:
                    found_k[e] = turn
                    found_1[e] = turn if hits[0] == 0 else None
                    left[e] = 0
                else:
                    current[e] = ranked[0]
                    left[e] = steps_between(objects[current[e]], objects[targets[e]])
        rows.append({"turn": turn,
                     "success@k": float(np.mean([f is not None for f in found_k])),
                     "success@1": float(np.mean([f is not None for f in found_1])),
                     "mean_steps_left": float(np.mean(left))})
    steps = [s for _, _, s in episodes]
    return {"config": asdict(config), "episodes": len(episodes), "gallery": len(dataset), "split": dataset.split,
            "steps_histogram": {str(s): steps.count(s) for s in sorted(set(steps))}, "turns": rows,
            "examples": [{"reference": r, "target": t, "steps": s, "turns": examples[e]}
                         for e, (r, t, s) in enumerate(episodes[:5])],
            "protocol": (f"simulated user: {len(episodes)} (reference, target) pairs {config.min_steps}-"
                         f"{config.max_steps or config.turns} edit steps apart; one describe_difference text per "
                         f"turn; the best result becomes the next reference; success = an image of the target's "
                         f"scene in the top {config.k}; the current reference is excluded from its results")}


def format_table(result: dict[str, Any]) -> str:
    k = result["config"]["k"]
    lines = [result["protocol"], f"{'turn':>4}  {f'success@{k}':>11}  {'success@1':>9}  {'steps left':>10}"]
    for row in result["turns"]:
        lines.append(f"{row['turn']:>4}  {100 * row['success@k']:10.1f}%  {100 * row['success@1']:8.1f}%  "
                     f"{row['mean_steps_left']:10.2f}")
    return "\n".join(lines)


def success_curve_png(result: dict[str, Any], path: str | Path) -> Path:
    """Success@K and @1 against the turn, drawn with PIL (matplotlib is not a dependency)."""
    width, height, left, right, top, bottom = 720, 440, 70, 170, 50, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = drawing.font(16), drawing.font(13)
    rows = result["turns"]
    turns = max(1, rows[-1]["turn"])
    plot_w, plot_h = width - left - right, height - top - bottom

    def xy(turn: float, value: float) -> tuple[float, float]:
        return left + plot_w * turn / turns, top + plot_h * (1 - value)

    k = result["config"]["k"]
    draw.text((left, 14), f"Interactive retrieval: success by turn ({result['episodes']} episodes)", fill="black",
              font=font)
    for pct in range(0, 101, 20):
        y = xy(0, pct / 100)[1]
        draw.line([(left, y), (left + plot_w, y)], fill=(228, 231, 236))
        draw.text((left - 44, y - 8), f"{pct}%", fill="black", font=small)
    for row in rows:
        x = xy(row["turn"], 0)[0]
        draw.line([(x, top + plot_h), (x, top + plot_h + 5)], fill="black")
        draw.text((x - 4, top + plot_h + 10), str(row["turn"]), fill="black", font=small)
    draw.line([(left, top), (left, top + plot_h), (left + plot_w, top + plot_h)], fill="black", width=2)
    draw.text((left + plot_w / 2 - 20, height - 28), "turn", fill="black", font=small)
    series = (("success@k", (47, 111, 236), f"target in top {k}"), ("success@1", (226, 104, 38), "target at rank 1"))
    for i, (key, colour, label) in enumerate(series):
        points = [xy(r["turn"], r[key]) for r in rows]
        draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
        legend_y = top + 8 + 24 * i
        draw.line([(left + plot_w + 14, legend_y + 7), (left + plot_w + 34, legend_y + 7)], fill=colour, width=3)
        draw.text((left + plot_w + 40, legend_y), f"{label}", fill="black", font=small)
    return drawing.save_png(image, path)
