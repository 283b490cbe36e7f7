"""Numerical parity with the released reference code, fixture by fixture (format: the fixtures' README).

The fixture folder is `../shared/reference/parity/` beside the checkout, or `CIRLAB_PARITY_DIR`. A fixture that
cirlab cannot match, or one with no runner, fails; nothing is skipped.
"""

from __future__ import annotations

import pytest
import torch

from tests.parity import clip4cir, composeae, crn, filmsan, tirg  # noqa: F401  (runner registrations)
from tests.parity.harness import compare, find_runner, list_cases, load_fixture, parity_dir

CASES = list_cases()


def test_fixture_folder_is_not_empty() -> None:
    assert CASES, f"no parity fixtures found in {parity_dir()} (set CIRLAB_PARITY_DIR)"


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_parity(path) -> None:
    fixture = load_fixture(path)
    torch.manual_seed(0)
    produced = find_runner(fixture.name)(fixture)
    failures = compare(fixture, produced)
    assert not failures, f"{fixture.name}: " + "; ".join(failures)
