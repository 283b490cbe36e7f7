"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds `state.safetensors` (model, optimiser tensors, RNG state) and `state.json`
(iteration, optimiser scalars, history). It is written to a temporary directory and swapped into place,
so a crash at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch

from cirlab.utils.errors import CirlabError
from cirlab.utils.io import (
    load_tensors,
    read_json,
    replace_dir_atomic,
    save_tensors_atomic,
    write_json_atomic,
)

CHECKPOINT_DIR = "checkpoint"


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {"param_groups": state["param_groups"], "state": {}}
    for pid, entry in state["state"].items():
        scalars["state"][str(pid)] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{pid}/{key}"] = value
            else:
                scalars["state"][str(pid)][key] = value
    return tensors, scalars


def _join_optimizer(tensors: dict[str, torch.Tensor], scalars: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): dict(entry) for pid, entry in scalars["state"].items()}
    for name, value in tensors.items():
        if name.startswith("optim/"):
            _, pid, key = name.split("/", 2)
            state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": scalars["param_groups"]}


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    extra: dict[str, Any]) -> None:
    """Atomically write model + optimiser + torch RNG + `extra` (JSON-able) for iteration `iteration`."""
    run_dir = Path(run_dir)
    opt_tensors, opt_scalars = _split_optimizer(optimizer.state_dict())
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(opt_tensors)
    tensors["rng/torch"] = torch.get_rng_state()
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint.", dir=run_dir))
    save_tensors_atomic(tmp / "state.safetensors", tensors)
    write_json_atomic(tmp / "state.json", {"iteration": iteration, "optimizer": opt_scalars, **extra})
    replace_dir_atomic(tmp, run_dir / CHECKPOINT_DIR)


def has_checkpoint(run_dir: Path) -> bool:
    return (Path(run_dir) / CHECKPOINT_DIR / "state.json").is_file()


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimiser and torch RNG in place; returns the JSON part (iteration, history, ...)."""
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    meta = read_json(ckpt / "state.json", "checkpoint")
    tensors = load_tensors(ckpt / "state.safetensors")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CirlabError(f"checkpoint {ckpt} does not match this run's model: {exc}") from None
    torch.set_rng_state(tensors["rng/torch"])
    return meta
