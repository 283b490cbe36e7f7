"""Multi-process training and encoding through PyTorch's own DDP, started by `torchrun`.

`torchrun --nproc-per-node N -m cirlab.cli train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; `init_from_env`
then joins the process group (NCCL on CUDA, Gloo on CPU) and the trainer wraps its step in
`DistributedDataParallel`; `cirlab eval` under torchrun shares the gallery and queries among the ranks
(`cirlab.inference.embedding.embed_batches(shard=True)`). Nothing here reimplements communication: these are thin
conveniences over `torch.distributed` (who am I, split a list of work, gather the pieces back in order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cirlab.utils.device import resolve_device
from cirlab.utils.errors import CirlabError


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> DistContext:
    """The context of an already initialised process group (or the single-process one)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistContext()


def init_from_env(device: torch.device) -> DistContext:
    """Join the torchrun job described by the environment, if any; returns this process's context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not dist.is_available():
        raise CirlabError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    return current()


def rank_device(name: str) -> torch.device:
    """The device of this process for `--device name`, joining the torchrun job if there is one: under torchrun
    a CUDA request puts each rank on its own GPU (cuda:LOCAL_RANK)."""
    device = resolve_device(name)
    ctx = init_from_env(device)
    return torch.device("cuda", ctx.local_rank) if ctx.enabled and device.type == "cuda" else device


def shard(items: Sequence[int], ctx: DistContext) -> list[int]:
    """This rank's share of `items` (every world_size-th item, starting at rank)."""
    return list(items[ctx.rank::ctx.world_size])


def gather_shards(local: torch.Tensor, total: int, ctx: DistContext) -> torch.Tensor:
    """Reassemble rows produced by `shard` on every rank into the original order, (total, D) on every rank."""
    if not ctx.enabled:
        return local
    per_rank = -(-total // ctx.world_size)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros(per_rank, *local.shape[1:], dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local.to(device)
    pieces = [torch.empty_like(padded) for _ in range(ctx.world_size)]
    dist.all_gather(pieces, padded)
    pieces = [piece.cpu() for piece in pieces]
    out = torch.empty(total, *local.shape[1:], dtype=local.dtype)
    for r, piece in enumerate(pieces):
        count = len(range(r, total, ctx.world_size))
        out[r::ctx.world_size] = piece[:count]
    return out


def any_rank(flag: bool, ctx: DistContext) -> bool:
    """True on every rank when `flag` is true on any rank (so that all ranks stop at the same step)."""
    if not ctx.enabled:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_buffers(module: torch.nn.Module, ctx: DistContext) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, e.g. before a sharded evaluation."""
    if ctx.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()
