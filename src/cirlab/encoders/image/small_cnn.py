"""A light CNN for small images (CSS at 64x64): the demo's default encoder on a laptop CPU.

Stem conv (stride 2) then three conv + max-pool stages, widths w-2w-4w-8w; about 60 MFLOPs per 64x64
image, a few times cheaper than ResNet-18 at the same size (see bench/bench_train.py). `pool="grid"`
(the default) average-pools the last map to a `grid x grid` layout and projects the flattened grid, so the
vector keeps where things are: on CSS, whose texts name grid cells, this learns several times faster than
global average pooling (`pool="avg"`, the ResNet/TIRG choice).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.encoders.base import IMAGE_ENCODERS, EncoderSpec, ImageEncoder, declares
from cirlab.utils.options import option, parse_options


def _conv(inp: int, out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                         nn.ReLU(inplace=True))


class SmallCNNEncoder(ImageEncoder):
    """stem (stride 2) -> [conv, maxpool] x 3 -> pool (grid or global average) -> Linear(-> out_dim)."""

    def __init__(self, out_dim: int = 512, width: int = 32, pool: str = "grid", grid: int = 3) -> None:
        super().__init__()
        if pool not in ("grid", "avg"):
            raise ValueError(f"small_cnn pool must be 'grid' or 'avg', not {pool!r}")
        chans = [width, width * 2, width * 4, width * 8]
        self.stages = nn.ModuleList([
            _conv(3, chans[0], stride=2),
            nn.Sequential(_conv(chans[0], chans[1]), nn.MaxPool2d(2)),
            nn.Sequential(_conv(chans[1], chans[2]), nn.MaxPool2d(2)),
            nn.Sequential(_conv(chans[2], chans[3]), nn.MaxPool2d(2)),
        ])
        self.map_channels = chans[-1]
        self.stage_channels = chans
        self.out_dim = out_dim
        self.pool_kind, self.grid = pool, grid
        cells = grid * grid if pool == "grid" else 1
        self.proj = nn.Linear(chans[-1] * cells, out_dim)

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        maps, x = [], images
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.stage_maps(images)[-1]

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.pool_kind == "grid":
            return self.proj(F.adaptive_avg_pool2d(fmap, self.grid).flatten(1))
        return self.proj(fmap.mean(dim=(2, 3)))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.stages.parameters())


@dataclass
class SmallCNNOptions:
    """`--image-option`s of small_cnn."""

    width: int = option(32, "channels of the stem; the stages have width, 2x, 4x and 8x")
    pool: Literal["grid", "avg"] = option("grid", "grid: average-pool to grid x grid cells and project the "
                                                  "flattened cells; avg: global average pooling")
    grid: int = option(3, "cells per side with pool=grid")


@IMAGE_ENCODERS.register("small_cnn")
@declares(SmallCNNOptions)
def small_cnn(spec: EncoderSpec) -> SmallCNNEncoder:
    opts = parse_options(SmallCNNOptions, spec.options, "image encoder", "small_cnn")
    return SmallCNNEncoder(spec.out_dim, width=opts.width, pool=opts.pool, grid=opts.grid)
