"""Training's side of mixed precision, and torch.compile (the CPU defaults stay fp32, eager).

* `precision`: the autocast of `cirlab.inference.precision` ("fp32", "bf16", "fp16"); fp16 trains with a gradient
  scaler (`grad_scaler`; CUDA only, where the scaler guards small gradients). Parameters and optimiser state stay
  float32 in every case.
* `compile`: `torch.compile` of the image side and the composition head (the model's `encode_image`,
  `compose_features` and `target_features`) - the tensor-only path; text encoders take strings and stay eager.
  Compilation happens on the first call; when it fails there (no C++ compiler, an unsupported operation) one
  warning line is printed and that function runs eager from then on. A failure that shows only when the backward
  pass is first compiled is not caught.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 on CUDA (elsewhere its calls pass straight through)."""
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16" and device.type == "cuda")


class CompiledOrEager:
    """Calls `torch.compile(fn)`; if that raises on the first call, warns once and calls `fn` from then on."""

    def __init__(self, fn: Callable[..., Any], name: str, backend: str = "inductor") -> None:
        self.eager, self.name, self.proven = fn, name, False
        self.compiled: Callable[..., Any] | None = None
        try:
            self.compiled = torch.compile(fn, backend=backend)
        except Exception as exc:  # noqa: BLE001 - e.g. a Python version torch.compile does not support
            self._warn(exc)

    def _warn(self, exc: Exception) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(f"warning: torch.compile of {self.name} failed ({type(exc).__name__}: {first}); running it eager",
              file=sys.stderr, flush=True)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            if self.proven:
                return self.compiled(*args, **kwargs)
            try:
                out = self.compiled(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run eager (a real error recurs there)
                self._warn(exc)
                self.compiled = None
            else:
                self.proven = True
                return out
        return self.eager(*args, **kwargs)


def compile_model(model: nn.Module, backend: str = "inductor") -> nn.Module:
    """Compile `model`'s image path and composition head in place (see the module docstring); returns it.

    Only bound methods are replaced, so parameters, state_dict names and checkpoints are unchanged. `backend`
    is torch.compile's (bench/bench_gpu.py's CPU smoke test uses "eager": tracing only, no code generation)."""
    for name in ("encode_image", "compose_features", "target_features"):
        setattr(model, name, CompiledOrEager(getattr(model, name), name, backend))
    return model
