"""The simulated user of multi-turn interactive evaluation: what a dataset provides when it can state, for any
two of its images, one change that takes the first towards the second.

`CIRDataset.simulated_user()` returns one (CSS: `cirlab.datasets.css_user.CSSSimulatedUser`) or None; the loop
itself (`cirlab.evaluation.interactive`) only ever talks to this protocol.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class SimulatedUser(Protocol):
    """A user who knows the hidden target and describes one difference per turn.

    `labels[i]` names the target image i stands for: any image with the same label satisfies a user looking
    for i (CSS: the same scene). Image numbers are the dataset's image indices.
    """

    labels: np.ndarray

    def describe(self, current: int, target: int) -> str | None:
        """One modification text taking image `current` one step towards image `target` (None: same target)."""
        ...

    def steps(self, current: int, target: int) -> int:
        """How many such texts separate `current` from `target` (0: same target)."""
        ...
