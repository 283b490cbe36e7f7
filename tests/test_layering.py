"""The package's layers import only the layers before them (utils -> datasets -> ... -> serving -> api -> cli), and
only the programs on top (the CLI, the `cirlab.train` API) and the trainer itself reach `cirlab.training`."""

from __future__ import annotations

import ast
from pathlib import Path

import cirlab

ORDER = ["utils", "datasets", "encoders", "models", "losses", "inference", "training", "evaluation", "index",
         "serving", "api", "cli"]
#: The layers that may import `cirlab.training`: evaluation, indexing and serving load models through inference.
TRAINING_USERS = {"training", "api", "cli"}
ROOT = Path(cirlab.__file__).parent


def layer_files(layer: str) -> list[Path]:
    """A layer's modules: its package's files, or the single module `cirlab/<layer>.py`."""
    module = ROOT / f"{layer}.py"
    return [module] if module.is_file() else sorted((ROOT / layer).rglob("*.py"))


def imported_layers(path: Path) -> set[str]:
    """Layers a module imports, at the top or inside functions (`import cirlab.x`, `from cirlab.x import y`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        if isinstance(node, ast.ImportFrom) and node.module == "cirlab":
            names = [f"cirlab.{a.name}" for a in node.names]  # `from cirlab import api`
        for name in names:
            parts = name.split(".")
            if parts[0] == "cirlab" and len(parts) > 1 and parts[1] in ORDER:
                found.add(parts[1])
    return found


def test_every_layer_imports_only_earlier_layers() -> None:
    assert all(layer_files(layer) for layer in ORDER)
    offenders = []
    for layer in ORDER:
        for path in layer_files(layer):
            for other in imported_layers(path):
                if ORDER.index(other) > ORDER.index(layer):
                    offenders.append(f"{path.relative_to(ROOT)} imports cirlab.{other}")
    assert offenders == []
    assert imported_layers(ROOT / "cli" / "train.py") >= {"training", "api"}


def test_nothing_but_the_cli_the_api_and_the_trainer_imports_training() -> None:
    offenders = [f"{path.relative_to(ROOT)}" for layer in ORDER if layer not in TRAINING_USERS
                 for path in layer_files(layer) if "training" in imported_layers(path)]
    assert offenders == []
    assert {"inference"} <= imported_layers(ROOT / "evaluation" / "evaluator.py")
    assert {"inference"} <= imported_layers(ROOT / "index" / "retriever.py")


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from cirlab.training import Trainer\n    import cirlab.index.store\n"
                      "from cirlab import api\n")
    assert imported_layers(module) == {"training", "index", "api"}
