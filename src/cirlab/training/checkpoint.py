"""Resumable checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint directory holds `state.safetensors` (model, optimiser tensors, RNG state) and `state.json`
(iteration, optimiser scalars, history). It is written to a temporary directory `.checkpoint.XXXX` and swapped
into place (`checkpoint` -> `.checkpoint.old`, temporary -> `checkpoint`, then `.checkpoint.old` is removed), so a
crash at any moment leaves the previous checkpoint whole. What such a crash leaves behind is handled on the next
run: stale temporaries are removed, and when it fell between the two renames (only `.checkpoint.old` is whole)
resuming restores that one.
"""

from __future__ import annotations

import os
import shutil
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
OLD_DIR = f".{CHECKPOINT_DIR}.old"  # where replace_dir_atomic parks the previous checkpoint during the swap


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
    recover_checkpoint(run_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT_DIR}.", dir=run_dir))
    save_tensors_atomic(tmp / "state.safetensors", tensors)
    write_json_atomic(tmp / "state.json", {"iteration": iteration, "optimizer": opt_scalars, **extra})
    replace_dir_atomic(tmp, run_dir / CHECKPOINT_DIR)


def _whole(directory: Path) -> bool:
    """Both files are written atomically, state.json last: its presence marks a complete checkpoint."""
    return (directory / "state.json").is_file() and (directory / "state.safetensors").is_file()


def checkpoint_dir(run_dir: Path) -> Path:
    """The checkpoint to resume from: `checkpoint/`, or else `.checkpoint.old/` when a crash between the swap's two
    renames left only that one whole (`checkpoint/` is returned when neither is, for error messages)."""
    run_dir = Path(run_dir)
    final, old = run_dir / CHECKPOINT_DIR, run_dir / OLD_DIR
    return old if not _whole(final) and _whole(old) else final


def has_checkpoint(run_dir: Path) -> bool:
    return _whole(checkpoint_dir(run_dir))


def recover_checkpoint(run_dir: Path) -> list[Path]:
    """Tidy what a crash during `save_checkpoint` left (call from the one process that writes the run): a whole
    `.checkpoint.old` goes back to `checkpoint` when that is missing, then every other `.checkpoint.*` folder
    (stale temporaries, a superseded old copy) is deleted. Returns the paths restored or removed."""
    run_dir = Path(run_dir)
    final, old = run_dir / CHECKPOINT_DIR, run_dir / OLD_DIR
    touched: list[Path] = []
    if not final.exists() and _whole(old):
        os.replace(old, final)
        touched.append(final)
    for stale in sorted(run_dir.glob(f".{CHECKPOINT_DIR}.*")):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
            touched.append(stale)
    return touched


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint, checked: what resuming reads must have the right types."""
    if not isinstance(meta, dict):
        raise CirlabError(f"checkpoint {path} is not a JSON object")
    iteration, optim = meta.get("iteration"), meta.get("optimizer")
    if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
        raise CirlabError(f"checkpoint {path}: 'iteration' must be a non-negative integer, not {iteration!r}")
    if not (isinstance(optim, dict) and isinstance(optim.get("state"), dict)
            and isinstance(optim.get("param_groups"), list)):
        raise CirlabError(f"checkpoint {path}: 'optimizer' must hold 'state' and 'param_groups'")
    if not isinstance(meta.get("history", []), list):
        raise CirlabError(f"checkpoint {path}: 'history' must be a list")
    elapsed = meta.get("elapsed_s", 0.0)
    if not isinstance(elapsed, int | float) or isinstance(elapsed, bool):
        raise CirlabError(f"checkpoint {path}: 'elapsed_s' must be a number")
    return meta


def load_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimiser and torch RNG in place; returns the JSON part (iteration, history, ...).

    Reads `checkpoint_dir(run_dir)`: `.checkpoint.old` when a crash mid-swap left only that one. Nothing is moved
    here (every DDP rank loads); the writing process tidies with `recover_checkpoint`."""
    ckpt = checkpoint_dir(run_dir)
    meta = _check_meta(read_json(ckpt / "state.json", "checkpoint"), ckpt / "state.json")
    tensors = load_tensors(ckpt / "state.safetensors")
    model_state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CirlabError(f"checkpoint {ckpt} does not match this run's model: {exc}") from None
    rng = tensors.get("rng/torch")
    if rng is None or rng.dtype != torch.uint8:
        raise CirlabError(f"checkpoint {ckpt} lacks the torch RNG state")
    torch.set_rng_state(rng)
    return meta
