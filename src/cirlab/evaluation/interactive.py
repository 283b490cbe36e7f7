"""Multi-turn interactive retrieval: a simulated user steers towards a hidden target, one change per turn.

Where the dataset can simulate a user (`CIRDataset.simulated_user()`; on the synthetic CSS benchmark the
difference between two scenes can be stated exactly), each episode starts from a reference image: the user says
one difference between the current reference and the hidden target, looks at the top-K results and, if the
target is not among them, takes the best result as the next reference and repeats, for up to T turns. Success
after turn t is the share of episodes whose target (any image with the target's label) reached the top-K by
then. The seed papers motivate this loop but measure one turn only.

The loop (`simulate`) sees the user only through the `SimulatedUser` protocol and the system only through a
`SearchFn`, so it is tested with scripted users and systems whose outcome is known in advance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from cirlab.datasets import CIRDataset
from cirlab.datasets.simulated_user import SimulatedUser
from cirlab.evaluation.recall import topk_chunked
from cirlab.inference import Pipeline
from cirlab.utils.errors import CirlabError

#: (references, texts, k) -> (len(references), k) image indices, best first, each reference left out of its row.
SearchFn = Callable[[Sequence[int], Sequence[str], int], np.ndarray]

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


@dataclass
class Turn:
    """One turn: the reference searched from, the user's text, the best result, the target's rank among the top K
    (1-based; None: not there), and the steps then separating the user from the target (0 once found)."""

    reference: int
    text: str
    top1: int
    target_rank: int | None
    steps_left: int


@dataclass
class Episode:
    """A (reference, target) pair `steps` edits apart, and its turns; an episode stops at the turn it succeeds."""

    reference: int
    target: int
    steps: int
    turns: list[Turn] = field(default_factory=list)

    @property
    def found_at(self) -> int | None:
        """The turn (1-based) whose top K held the target, or None."""
        return len(self.turns) if self.turns and self.turns[-1].target_rank is not None else None


def require_simulated_user(dataset: CIRDataset) -> SimulatedUser:
    """The dataset's simulated user, or a CirlabError saying this dataset has none."""
    user = dataset.simulated_user()
    if user is None:
        raise CirlabError(f"interactive-eval needs a dataset that can simulate a user (css); dataset "
                          f"{dataset.name!r} cannot state the difference between two of its images")
    return user


def sample_episodes(user: SimulatedUser, config: InteractiveConfig) -> list[tuple[int, int, int]]:
    """(reference, target, steps) triples with min_steps <= steps <= max_steps, drawn with `config.seed`."""
    labels = np.asarray(user.labels)
    high = config.max_steps or config.turns
    rng = np.random.default_rng(config.seed)
    chosen: dict[tuple[int, int], int] = {}
    for _ in range(config.episodes * 200):
        if len(chosen) == config.episodes:
            break
        ref, tgt = (int(x) for x in rng.integers(len(labels), size=2))
        if labels[ref] == labels[tgt] or (ref, tgt) in chosen:
            continue
        steps = user.steps(ref, tgt)
        if config.min_steps <= steps <= high:
            chosen[(ref, tgt)] = steps
    if not chosen:
        raise CirlabError(f"no (reference, target) pair of these {len(labels)} images is {config.min_steps}-{high} "
                          "steps apart")
    return [(r, t, s) for (r, t), s in chosen.items()]


def simulate(user: SimulatedUser, episodes: Sequence[tuple[int, int, int]], search: SearchFn, turns: int,
             k: int) -> list[Episode]:
    """Play every episode for up to `turns` turns against `search`; the episodes still looking are searched
    together each turn. A miss makes the best result the next reference."""
    labels = np.asarray(user.labels)
    played = [Episode(r, t, s) for r, t, s in episodes]
    current = [r for r, _, _ in episodes]
    for _ in range(turns):
        active = [e for e, episode in enumerate(played) if episode.found_at is None]
        if not active:
            break
        texts = []
        for e in active:
            text = user.describe(current[e], played[e].target)
            if text is None:
                raise CirlabError(f"the simulated user has nothing to say between image {current[e]} and its target "
                                  f"{played[e].target}, which it labels differently")
            texts.append(text)
        top = np.asarray(search([current[e] for e in active], texts, k))
        for row, e in enumerate(active):
            ranked = [int(p) for p in top[row]]
            target = played[e].target
            hits = [i for i, p in enumerate(ranked) if labels[p] == labels[target]]
            reference = current[e]
            if not hits:
                current[e] = ranked[0]
            played[e].turns.append(Turn(reference, texts[row], ranked[0], hits[0] + 1 if hits else None,
                                        0 if hits else user.steps(current[e], target)))
    return played


def success_by_turn(episodes: Sequence[Episode], turns: int) -> list[dict[str, Any]]:
    """Per turn t = 0..turns: success@K by t, success@1 by t (the target at rank 1 on the turn it entered the
    top K, where the user stops), and the mean steps still separating reference and target (0 once found)."""
    rows = []
    for t in range(turns + 1):
        found = [e.found_at is not None and e.found_at <= t for e in episodes]
        at_one = [f and e.turns[-1].target_rank == 1 for f, e in zip(found, episodes, strict=True)]
        left = [e.steps if t == 0 else e.turns[min(t, len(e.turns)) - 1].steps_left for e in episodes]
        rows.append({"turn": t, "success@k": float(np.mean(found)), "success@1": float(np.mean(at_one)),
                     "mean_steps_left": float(np.mean(left))})
    return rows


def model_search(pipe: Pipeline, dataset: CIRDataset, progress: bool = True) -> SearchFn:
    """A `SearchFn` over every image of `dataset` with the pipeline's model (the gallery is encoded once, now)."""
    gallery = pipe.embed_dataset(dataset, list(range(len(dataset))), progress=progress)

    @torch.no_grad()
    def search(references: Sequence[int], texts: Sequence[str], k: int) -> np.ndarray:
        queries = pipe.compose_dataset(dataset, list(references), list(texts))
        _, top = topk_chunked(queries, gallery, k, exclude=np.asarray(references, dtype=np.int64))
        return top.numpy()

    return search


def interactive_eval(pipe: Pipeline, dataset: CIRDataset, config: InteractiveConfig, progress: bool = True
                     ) -> dict[str, Any]:
    """Simulate the episodes with the pipeline's model; per turn the rows of `success_by_turn` (turn 0 is the
    starting point: nothing found, initial distances), with the first five episodes as examples."""
    config.validate()
    user = require_simulated_user(dataset)
    episodes = sample_episodes(user, config)
    played = simulate(user, episodes, model_search(pipe, dataset, progress), config.turns, config.k)
    steps = [s for _, _, s in episodes]
    return {"config": asdict(config), "episodes": len(episodes), "gallery": len(dataset), "split": dataset.split,
            "steps_histogram": {str(s): steps.count(s) for s in sorted(set(steps))},
            "turns": success_by_turn(played, config.turns),
            "examples": [asdict(e) for e in played[:5]],
            "protocol": (f"simulated user: {len(episodes)} (reference, target) pairs {config.min_steps}-"
                         f"{config.max_steps or config.turns} edit steps apart; one difference text per turn; the "
                         f"best result becomes the next reference; success = an image with the target's label in "
                         f"the top {config.k}; the current reference is excluded from its results")}


def format_table(result: dict[str, Any]) -> str:
    k = result["config"]["k"]
    lines = [result["protocol"], f"{'turn':>4}  {f'success@{k}':>11}  {'success@1':>9}  {'steps left':>10}"]
    for row in result["turns"]:
        lines.append(f"{row['turn']:>4}  {100 * row['success@k']:10.1f}%  {100 * row['success@1']:8.1f}%  "
                     f"{row['mean_steps_left']:10.2f}")
    return "\n".join(lines)
