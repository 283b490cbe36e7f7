"""Autocast precision of the forward passes, for evaluation, encoding and training alike.

"fp32" (default: no autocast), "bf16" (autocast to bfloat16, on CUDA or, as an opt-in, on the CPU) or "fp16"
(autocast to float16; CUDA only). Parameters stay float32 in every case; only the forward computations are cast,
and the embeddings are turned back to float32 before they are normalised (`cirlab.inference.embedding`).
"""

from __future__ import annotations

import contextlib

import torch

from cirlab.utils.errors import CirlabError

PRECISIONS = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """A CirlabError naming the problem for an unknown precision, or fp16 off CUDA."""
    if precision not in PRECISIONS:
        raise CirlabError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise CirlabError(f"precision fp16 needs CUDA (device here: {device}); use bf16 on the CPU")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` on `device` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])
