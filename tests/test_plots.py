"""The reports' matplotlib charts: valid PNGs of the fixed size that show their data, and loud failures on
histories or metrics with nothing to draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cirlab.evaluation.plots import SIZE, recall_bar_chart, success_curve_png, training_curve_png
from cirlab.utils.errors import CirlabError

LOSS_BLUE = (0x3C, 0x6E, 0xC8)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as png:
        png.load()
        assert png.format == "PNG" and png.size == SIZE
        return np.asarray(png.convert("RGB"))


def share_of(colour: tuple[int, int, int], image: np.ndarray) -> float:
    return float(np.mean(np.all(np.abs(image.astype(int) - colour) <= 8, axis=-1)))


def history(iterations: int = 200, evals: tuple[int, ...] = (100, 200)) -> list[dict]:
    losses = [{"iteration": i, "loss": 2.0 / (1 + i / 50), "elapsed_s": i / 10} for i in range(20, iterations + 1, 20)]
    recalls = [{"iteration": i, "eval": {"recall@1": i / 400, "recall@10": i / 250}} for i in evals]
    return losses + recalls


def test_training_curve_draws_the_loss_and_the_evaluations(tmp_path: Path) -> None:
    with_evals = pixels(training_curve_png(history(), tmp_path / "a.png", "run"))
    loss_only = pixels(training_curve_png(history(evals=()), tmp_path / "b.png", "run"))
    assert share_of(LOSS_BLUE, with_evals) > 0.001 and share_of(LOSS_BLUE, loss_only) > 0.001
    assert not np.array_equal(with_evals, loss_only)  # the recall panel is drawn only when there are evaluations


@pytest.mark.parametrize(("entries", "message"), [
    ([], "no training losses to plot"),
    ([{"iteration": 100, "eval": {"recall@1": 0.5}}], "no training losses to plot"),
    ([{"iteration": 20, "loss": float("nan")}], "iteration 20 has no finite number as loss"),
    ([{"iteration": "20", "loss": 1.0}], "iteration '20' has no finite number as loss"),
])
def test_training_curve_refuses_a_history_without_usable_losses(tmp_path: Path, entries: list, message: str) -> None:
    with pytest.raises(CirlabError, match=rf"run/metrics.json: .*{message}"):
        training_curve_png(entries, tmp_path / "c.png", source="run/metrics.json")
    assert not (tmp_path / "c.png").exists()


def test_recall_chart_and_success_curve_are_pngs_of_the_fixed_size(tmp_path: Path) -> None:
    bars = pixels(recall_bar_chart({"recall@1": 0.4, "recall@10": 0.9, "loss": 3.0}, "R@K", tmp_path / "r.png"))
    assert share_of(LOSS_BLUE, bars) > 0.05  # the bars are drawn in the same blue
    result = {"episodes": 4, "config": {"k": 5},
              "turns": [{"turn": t, "success@k": t / 3, "success@1": t / 6} for t in range(4)]}
    assert pixels(success_curve_png(result, tmp_path / "s.png")).std() > 0
    with pytest.raises(CirlabError, match="no recall@K figures"):
        recall_bar_chart({"loss": 1.0}, "R@K", tmp_path / "none.png")
