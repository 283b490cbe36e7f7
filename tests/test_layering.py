"""The package's layers import only the layers before them (datasets -> ... -> serving -> cli)."""

from __future__ import annotations

import ast
from pathlib import Path

import cirlab

ORDER = ["utils", "datasets", "encoders", "models", "losses", "training", "evaluation", "index", "serving", "cli"]
ROOT = Path(cirlab.__file__).parent


def imported_layers(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        for name in names:
            parts = name.split(".")
            if parts[0] == "cirlab" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
    return found


def test_every_layer_imports_only_earlier_layers() -> None:
    offenders = []
    for layer in ORDER:
        for path in sorted((ROOT / layer).rglob("*.py")):
            for other in imported_layers(path):
                if ORDER.index(other) > ORDER.index(layer):
                    offenders.append(f"{path.relative_to(ROOT)} imports cirlab.{other}")
    assert offenders == []
    assert imported_layers(ROOT / "cli" / "train.py") >= {"training", "evaluation"}
