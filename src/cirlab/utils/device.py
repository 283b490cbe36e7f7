"""Device choice, shared by every command that runs a model (`--device`) and by the Python API."""

from __future__ import annotations

import torch

from cirlab.utils.errors import CirlabError


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when available; 'cpu', 'cuda', 'cuda:N' and torch devices are taken as they are. An
    unavailable CUDA request or an unknown name is a user error (CirlabError), not a traceback."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CirlabError(f"--device {name}: CUDA is not available on this machine")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CirlabError(f"unknown --device {name!r}") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CirlabError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
