"""The one batched encoding path: evaluation, index building, the feature cache and the Python API all run their
images and texts through `map_batches`, and every retrieval vector is normalised in `unit_vectors` only.

`map_batches` is the loop (batches of row numbers -> the caller's encode function, without gradients and under
the precision's autocast); `embed_batches` adds the normalisation, a finiteness check naming the bad row,
sharding across torchrun ranks, and the destination (a tensor on a device, or rows of an array such as an index's
memory-mapped vectors, so that a large gallery never sits in memory twice).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from cirlab.inference import distributed
from cirlab.inference.precision import autocast
from cirlab.utils.errors import CirlabError
from cirlab.utils.threads import tick

Features = Any  # a tensor, or a dict of tensors (encoder outputs of models that need maps or tokens)
EncodeFn = Callable[[list[int]], Features]


def unit_vectors(x: torch.Tensor) -> torch.Tensor:
    """Retrieval vectors as float32 of unit L2 norm: the only place model outputs are normalised."""
    return F.normalize(x.float(), dim=-1)


@torch.no_grad()
def map_batches(rows: Sequence[int], encode: EncodeFn, batch_size: int, device: torch.device,
                precision: str = "fp32", progress: bool = False, desc: str = "encoding"
                ) -> Iterator[tuple[int, Features]]:
    """`encode(chunk)` for consecutive chunks of `rows` (at most `batch_size` each), without gradients and under
    `precision`'s autocast on `device`; yields (offset of the chunk in `rows`, output as `encode` returned it)."""
    if batch_size < 1:
        raise CirlabError(f"batch size must be >= 1, got {batch_size}")
    rows = list(rows)
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, disable=not progress, leave=False):
        with autocast(device, precision):
            out = encode(rows[start:start + batch_size])
        if device.type == "cpu":
            tick()  # fewer torch threads while other processes use the CPUs (cirlab.utils.threads)
        yield start, out


@torch.no_grad()
def embed_batches(count: int, encode: EncodeFn, dim: int, *, batch_size: int = 64, device: torch.device | str = "cpu",
                  precision: str = "fp32", output_device: torch.device | str = "cpu", out: np.ndarray | None = None,
                  shard: bool = False, progress: bool = False, desc: str = "embedding",
                  describe: Callable[[int], str] | None = None) -> torch.Tensor | np.ndarray:
    """Unit vectors (count, dim) of rows 0..count-1, where `encode(rows)` gives the model's (len(rows), dim) output.

    `device` is where `encode` computes (for autocast); the result is a float32 tensor on `output_device`, or,
    given `out` (a (count, dim) float32 array), written into its rows block by block and returned. With `shard`,
    under torchrun each rank encodes every world_size-th row and the pieces are gathered in order on every rank.
    A non-finite vector raises CirlabError naming its row (`describe(row)`, e.g. the image's path)."""
    device = torch.device(device)
    ctx = distributed.current() if shard else distributed.DistContext()
    if out is not None and ctx.enabled:
        raise ValueError("embed_batches: `out` and sharding across ranks cannot be combined")
    mine = distributed.shard(range(count), ctx)
    chunks = []
    for start, raw in map_batches(mine, encode, batch_size, device, precision, progress and ctx.is_main, desc):
        block = unit_vectors(raw)
        finite = torch.isfinite(block).all(dim=-1)
        if not bool(finite.all()):
            row = mine[start + int(torch.argmin(finite.int()))]
            raise CirlabError(f"the model's embedding of {describe(row) if describe else f'row {row}'} is not finite "
                              f"(NaN or infinity): are the weights damaged?")
        if out is not None:
            out[start:start + len(block)] = block.cpu().numpy()
        else:
            chunks.append(block.to(output_device) if not ctx.enabled else block.cpu())
    if out is not None:
        return out
    local = torch.cat(chunks) if chunks else torch.empty(0, dim, device=output_device if not ctx.enabled else "cpu")
    if not ctx.enabled:
        return local
    return distributed.gather_shards(local, count, ctx).to(output_device)
