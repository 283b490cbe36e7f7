"""Multi-turn interactive evaluation: the turn loop against scripted users and systems whose outcome is known,
the CSS simulated user (edit distances, episode sampling), the real model's logs, the CLI and its PNG."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from _index_helpers import make_tiny_run
from PIL import Image

from cirlab.cli.main import main
from cirlab.datasets import CIRDataset
from cirlab.datasets.css import CSSDataset
from cirlab.datasets.css_synth import apply_modification
from cirlab.datasets.css_user import steps_between
from cirlab.evaluation.interactive import (
    InteractiveConfig,
    format_table,
    interactive_eval,
    model_search,
    require_simulated_user,
    sample_episodes,
    simulate,
    success_by_turn,
)
from cirlab.evaluation.plots import SIZE
from cirlab.inference import load
from cirlab.utils.errors import CirlabError


class LineUser:
    """Images 0..2n-1 on a line of n positions (image i is at position i // 2, two images per position); the user
    says 'left' or 'right', one position per text."""

    def __init__(self, positions: int) -> None:
        self.labels = np.arange(2 * positions) // 2

    def describe(self, current: int, target: int) -> str | None:
        gap = int(self.labels[target] - self.labels[current])
        return None if gap == 0 else ("right" if gap > 0 else "left")

    def steps(self, current: int, target: int) -> int:
        return abs(int(self.labels[target] - self.labels[current]))


def obedient_search(user: LineUser):
    """A system that moves exactly one position as told: its best result is the told position's first image."""
    def search(references: Sequence[int], texts: Sequence[str], k: int) -> np.ndarray:
        rows = []
        for ref, text in zip(references, texts, strict=True):
            told = 2 * (int(user.labels[ref]) + (1 if text == "right" else -1))
            others = [i for i in range(len(user.labels)) if i not in (ref, told)]
            rows.append([told, *others][:k])
        return np.array(rows)
    return search


def test_an_obedient_system_finds_each_target_after_exactly_its_steps() -> None:
    user = LineUser(12)
    episodes = [(0, 6, 3), (1, 2, 1), (22, 14, 4), (10, 21, 5), (9, 3, 3)]  # (reference, target, steps)
    assert all(user.steps(r, t) == s for r, t, s in episodes)
    played = simulate(user, episodes, obedient_search(user), turns=4, k=1)
    for episode in played:
        expected = min(episode.steps, 4)
        assert len(episode.turns) == expected  # stops at its success, or after the last turn
        assert episode.found_at == (episode.steps if episode.steps <= 4 else None)
        for before, after in zip(episode.turns, episode.turns[1:], strict=False):
            assert after.reference == before.top1 and before.target_rank is None
        assert [t.steps_left for t in episode.turns] == [max(episode.steps - t, 0) for t in range(1, expected + 1)]
    rows = success_by_turn(played, 4)
    for t, row in enumerate(rows):
        assert row["success@k"] == pytest.approx(np.mean([s <= t for _, _, s in episodes]))
        assert row["success@1"] == row["success@k"]  # k = 1
        assert row["mean_steps_left"] == pytest.approx(np.mean([max(s - t, 0) for _, _, s in episodes]))


def test_an_oracle_succeeds_at_turn_one_and_a_blind_system_never() -> None:
    user = LineUser(10)
    episodes = [(0, 9, 4), (4, 17, 6), (19, 1, 9)]
    targets = {r: t for r, t, _ in episodes}

    def oracle(references: Sequence[int], texts: Sequence[str], k: int) -> np.ndarray:
        return np.array([[targets[r] ^ 1, targets[r]][:k] for r in references])  # the target's twin, then it

    played = simulate(user, episodes, oracle, turns=3, k=2)
    assert [len(e.turns) for e in played] == [1, 1, 1] and [e.turns[0].target_rank for e in played] == [1, 1, 1]
    assert success_by_turn(played, 3)[1] == {"turn": 1, "success@k": 1.0, "success@1": 1.0, "mean_steps_left": 0.0}

    def blind(references: Sequence[int], texts: Sequence[str], k: int) -> np.ndarray:
        return np.array([[18 if r != 18 else 16] for r in references])  # always the same far image

    never = simulate(user, [(0, 3, 1), (2, 7, 2)], blind, turns=3, k=1)
    assert [len(e.turns) for e in never] == [3, 3] and all(e.found_at is None for e in never)
    assert [(t.reference, t.top1, t.steps_left) for t in never[0].turns] == [(0, 18, 8), (18, 16, 7), (16, 18, 8)]
    assert [r["success@k"] for r in success_by_turn(never, 3)] == [0.0] * 4


def test_success_after_a_later_turn_counts_at_that_turn_not_before() -> None:
    user = LineUser(10)
    played = simulate(user, [(0, 6, 3), (0, 2, 1)], obedient_search(user), turns=3, k=1)
    assert [e.found_at for e in played] == [3, 1]
    assert [r["success@k"] for r in success_by_turn(played, 3)] == [0.0, 0.5, 0.5, 1.0]


@pytest.fixture(scope="module")
def run_dir(tiny_css: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_run(tiny_css, tmp_path_factory.mktemp("interactive") / "run")


@pytest.fixture(scope="module")
def dataset(run_dir: Path) -> CSSDataset:
    return load(run_dir).open_dataset("test")


def test_one_modification_is_one_step_and_steps_are_a_path(dataset: CSSDataset) -> None:
    for mod in dataset.mods[:20]:
        src, tgt = dataset.objects[mod["from"][0]], dataset.objects[mod["to"][0]]
        assert steps_between(src, tgt) == 1
        assert steps_between(apply_modification(src, mod["to_str"]), tgt) == 0
    assert steps_between(dataset.objects[0], dataset.objects[0]) == 0


def test_css_user_describes_one_step_towards_the_target(dataset: CSSDataset) -> None:
    user = dataset.simulated_user()
    ref, tgt = 0, next(i for i in range(len(dataset)) if dataset.labels[i] != dataset.labels[0])
    text = user.describe(ref, tgt)
    assert text.split()[0] in ("add", "remove", "make")
    after = apply_modification(dataset.objects[ref], text)
    assert steps_between(after, dataset.objects[tgt]) == user.steps(ref, tgt) - 1
    assert user.describe(tgt, tgt) is None and user.steps(tgt, tgt) == 0


def test_episodes_respect_the_step_range_and_the_seed(dataset: CSSDataset) -> None:
    user = dataset.simulated_user()
    config = InteractiveConfig(turns=4, episodes=30, min_steps=2, max_steps=3, seed=3)
    episodes = sample_episodes(user, config)
    assert len(episodes) == 30 and episodes == sample_episodes(user, config)
    assert episodes != sample_episodes(user, InteractiveConfig(turns=4, episodes=30, min_steps=2, max_steps=3))
    for ref, tgt, steps in episodes:
        assert 2 <= steps <= 3 and steps == steps_between(dataset.objects[ref], dataset.objects[tgt])
        assert dataset.labels[ref] != dataset.labels[tgt]


def test_the_model_loop_matches_its_logs_and_a_gallery_sized_k_always_succeeds(run_dir: Path,
                                                                               dataset: CSSDataset) -> None:
    pipe = load(run_dir)
    config = InteractiveConfig(turns=3, k=5, episodes=20)
    result = interactive_eval(pipe, dataset, config, progress=False)
    user = dataset.simulated_user()
    played = simulate(user, sample_episodes(user, config), model_search(pipe, dataset, progress=False), 3, 5)
    assert result["examples"] == [
        {"reference": e.reference, "target": e.target, "steps": e.steps,
         "turns": [vars(t) for t in e.turns]} for e in played[:5]]
    for episode in played:
        ranks = [t.target_rank for t in episode.turns]
        assert all(r is None for r in ranks[:-1]) and (len(ranks) == 3 or ranks[-1] is not None)
        for turn in episode.turns:
            assert turn.text == user.describe(turn.reference, episode.target)
            assert turn.reference != turn.top1  # the reference is excluded from its own results
        for before, after in zip(episode.turns, episode.turns[1:], strict=False):
            assert after.reference == before.top1
    for row in result["turns"]:  # success by turn t, recomputed from the logged ranks
        found = [any(t.target_rank is not None for t in e.turns[:row["turn"]]) for e in played]
        first = [any(t.target_rank == 1 for t in e.turns[:row["turn"]]) for e in played]
        assert row["success@k"] == pytest.approx(np.mean(found)) and row["success@1"] == pytest.approx(np.mean(first))
    assert result["turns"][0] == {"turn": 0, "success@k": 0.0, "success@1": 0.0,
                                  "mean_steps_left": pytest.approx(np.mean([e.steps for e in played]))}
    assert "success@5" in format_table(result)
    everything = interactive_eval(pipe, dataset, InteractiveConfig(turns=2, k=len(dataset) - 1, episodes=10),
                                  progress=False)
    assert everything["turns"][1]["success@k"] == 1.0 and everything["turns"][1]["mean_steps_left"] == 0.0


def test_cli_writes_json_and_a_png_curve(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["interactive-eval", str(run_dir), "--episodes", "10", "--turns", "2", "-k", "3", "--out",
                 str(tmp_path), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(printed["turns"]) == 3 and printed["episodes"] == 10
    saved = json.loads((tmp_path / "interactive_eval.json").read_text())
    assert saved["turns"] == printed["turns"]
    with Image.open(tmp_path / "interactive_eval.png") as png:
        png.load()
        assert png.format == "PNG" and png.size == SIZE


def test_bad_settings_and_datasets_without_a_user_are_clear_errors(run_dir: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["interactive-eval", str(run_dir), "--turns", "0"]) == 2
    assert "--turns, --k and --episodes must be >= 1" in capsys.readouterr().err
    assert main(["interactive-eval", str(run_dir), "--min-steps", "4", "--max-steps", "2"]) == 2
    assert "--min-steps" in capsys.readouterr().err
    assert CIRDataset(tmp_path, "test").simulated_user() is None
    monkeypatch.setattr(CSSDataset, "simulated_user", lambda self: None)
    assert main(["interactive-eval", str(run_dir), "--episodes", "2", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interactive-eval needs a dataset that can simulate a user" in err[0]
    with pytest.raises(CirlabError, match="'css' cannot state"):
        require_simulated_user(load(run_dir).open_dataset("test"))
