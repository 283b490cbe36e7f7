"""Load a golden fixture from the released code, run cirlab on it, compare every recorded number.

A fixture is `<case>.safetensors` + `<case>.json` (format: the fixtures' README). A *runner* rebuilds the cirlab
module at the fixture's sizes, loads `param.*` through the model's documented name mapping, feeds `input.*`,
computes the stated scalar, back-propagates, and returns a dict keyed like the fixture: `output.<name>`,
`grad.input.<name>`, `grad.param.<reference name>`, `output.buffers_after.<reference name>`,
`output.true_grad.<...>`. `compare` then checks that every such key of the fixture was produced and matches.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

DEFAULT_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "parity"
CHECKED_PREFIXES = ("output.", "grad.input.", "grad.param.")


def parity_dir() -> Path:
    """`CIRLAB_PARITY_DIR` when set, else `../shared/reference/parity` beside the checkout."""
    return Path(os.environ.get("CIRLAB_PARITY_DIR", str(DEFAULT_DIR)))


@dataclass
class Fixture:
    name: str
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    def prefixed(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under `prefix`, keyed by the rest of their name (e.g. `params = f.prefixed("param.")`)."""
        return {k[len(prefix):]: v for k, v in self.tensors.items() if k.startswith(prefix)}

    def input(self, name: str, requires_grad: bool | None = None) -> torch.Tensor:
        """A fresh copy of `input.<name>`; float inputs require grad unless told otherwise."""
        t = self.tensors[f"input.{name}"].clone()
        if requires_grad is None:
            requires_grad = t.is_floating_point() and not name.startswith("cotangent")
        return t.requires_grad_(requires_grad)

    def input_names(self) -> list[str]:
        return sorted(self.prefixed("input."))


def load_fixture(path: Path) -> Fixture:
    meta = json.loads(path.with_suffix(".json").read_text())
    return Fixture(path.stem, meta, load_file(str(path.with_suffix(".safetensors"))))


def list_cases(folder: Path | None = None) -> list[Path]:
    folder = folder or parity_dir()
    return sorted(p.with_suffix("") for p in folder.glob("*.json") if p.with_suffix(".safetensors").exists())


Runner = Callable[[Fixture], dict[str, torch.Tensor]]
RUNNERS: dict[str, Runner] = {}


def runner(*prefixes: str) -> Callable[[Runner], Runner]:
    """Register a runner for the cases whose name starts with one of `prefixes` (the longest prefix wins)."""

    def deco(fn: Runner) -> Runner:
        for p in prefixes:
            RUNNERS[p] = fn
        return fn

    return deco


def find_runner(case: str) -> Runner:
    matches = [p for p in RUNNERS if case.startswith(p)]
    if not matches:
        raise AssertionError(f"no cirlab runner for parity case {case!r} (known prefixes: {sorted(RUNNERS)})")
    return RUNNERS[max(matches, key=len)]


def set_train_mode(module: torch.nn.Module, train: bool) -> None:
    """The fixtures' modes: eval, or train with every Dropout at p=0 and BatchNorm momentum 0.1."""
    module.train(train)
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1


def is_train(fixture: Fixture) -> bool:
    return str(fixture.meta.get("mode", "")).startswith("train")


def cotangent_sum(outputs: dict[str, torch.Tensor], fixture: Fixture) -> torch.Tensor:
    """The composition cases' scalar: sum of output * cotangent, with one shared `input.cotangent` or one
    `input.cotangent.<output>` per output."""
    total = torch.zeros(())
    cot = fixture.prefixed("input.cotangent")
    for key, value in cot.items():
        name = key.lstrip(".") or None
        out = outputs[name] if name else next(iter(outputs.values()))
        total = total + (out * value).sum()
    return total


def grads_of(named: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """`{prefix + name: tensor.grad}` (zeros where no gradient reached the tensor, as the fixtures store it)."""
    return {f"{prefix}{k}": (v.grad if v.grad is not None else torch.zeros_like(v)) for k, v in named.items()}


def compare(fixture: Fixture, produced: dict[str, torch.Tensor]) -> list[str]:
    """Every checked key of the fixture must be produced and match; returns the list of failures."""
    tol = fixture.meta.get("default_tolerance") or {"atol": 1e-5, "rtol": 1e-4}
    atol, rtol = float(tol["atol"]), float(tol["rtol"])
    overrides = {k: float(v["atol"] if isinstance(v, dict) else v)
                 for k, v in (fixture.meta.get("tolerance_overrides") or {}).items()}
    noise_keys = set((fixture.meta.get("grads_mathematically_zero") or {}).get("keys", []))
    failures = []
    for key, ref in sorted(fixture.tensors.items()):
        if not key.startswith(CHECKED_PREFIXES) or key.startswith("output64."):
            continue
        if key not in produced:
            failures.append(f"{key}: not produced by cirlab")
            continue
        mine = produced[key].detach().to(torch.float64 if ref.is_floating_point() else ref.dtype).cpu()
        ref = ref.to(mine.dtype)
        if mine.shape != ref.shape:
            mine = mine.reshape(ref.shape) if mine.numel() == ref.numel() else mine
        if mine.shape != ref.shape:
            failures.append(f"{key}: shape {tuple(mine.shape)} != reference {tuple(ref.shape)}")
            continue
        a = overrides.get(key, atol)
        if key in noise_keys:  # exactly zero in exact arithmetic: the stored value is float32 noise
            a = max(a, 10 * float(ref.abs().max()))
        if not torch.allclose(mine, ref, atol=a, rtol=rtol):
            err = (mine - ref).abs().max().item()
            failures.append(f"{key}: max abs error {err:.3g} (atol {a:.3g}, rtol {rtol:g})")
    return failures
