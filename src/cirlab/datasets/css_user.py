"""The CSS simulated user: the generator's own words (`describe_difference`) state one difference per turn.

On CSS the difference between two scenes can be stated exactly: fix one attribute of an object, remove an
object the target lacks, or add a missing one, each in the generator's phrasing ("make ...", "remove ...",
"add ..."); repeating it reaches the target, so the number of texts is an edit distance between scenes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cirlab.datasets.css_synth import apply_modification, describe_difference
from cirlab.utils.errors import CirlabError

Scene = Sequence[Mapping[str, Any]]


def steps_between(source: Scene, target: Scene, limit: int = 50) -> int:
    """How many single-difference texts take scene `source` to scene `target` (the user's path length)."""
    current, steps = list(source), 0
    while (text := describe_difference(current, target)) is not None:
        current = apply_modification(current, text)
        steps += 1
        if steps > limit:
            raise CirlabError("describe_difference did not converge; are these scenes from `cirlab data css`?")
    return steps


class CSSSimulatedUser:
    """`SimulatedUser` over CSS scenes (`objects[i]`: image i's objects) with scene labels `labels`."""

    def __init__(self, objects: Sequence[Scene], labels: np.ndarray) -> None:
        if not len(objects):
            raise CirlabError("interactive-eval needs CSS scenes; this split has none")
        try:
            describe_difference(objects[0], objects[-1])
        except (ValueError, KeyError):
            raise CirlabError("interactive-eval needs scenes from `cirlab data css` (one object per grid cell, "
                              "with sizes); this CSS file has other scenes") from None
        self.objects = objects
        self.labels = np.asarray(labels)

    def describe(self, current: int, target: int) -> str | None:
        return describe_difference(self.objects[current], self.objects[target])

    def steps(self, current: int, target: int) -> int:
        return steps_between(self.objects[current], self.objects[target])
