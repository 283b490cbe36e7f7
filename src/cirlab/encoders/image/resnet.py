"""ResNet-18/50 in plain PyTorch. Parameter names match torchvision's, so a torchvision-format state dict
saved to a local file loads with `weights=PATH` (nothing is downloaded). TIRG replaces the classifier with
Linear(512 -> D); here that projection is `proj` and the trunk ends at `layer4`."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cirlab.encoders.base import IMAGE_ENCODERS, EncoderSpec, ImageEncoder, declares, read_state_dict
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import NoOptions, parse_options


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inp, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inp: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inp, planes * self.expansion, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


def _downsample(inp: int, out: int, stride: int) -> nn.Module | None:
    if stride == 1 and inp == out:
        return None
    return nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class ResNetEncoder(ImageEncoder):
    """ResNet trunk -> global average pool -> Linear(C -> out_dim)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int], out_dim: int = 512) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inp, stages = 64, []
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(inp, planes, stride=2 if (i > 0 and j == 0) else 1))
                inp = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.map_channels = inp
        self.stage_channels = [64 * block.expansion * 2**i for i in range(4)]
        self.out_dim = out_dim
        self.proj = nn.Linear(inp, out_dim)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        maps = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.stage_maps(images)[-1]

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.proj(fmap.mean(dim=(2, 3)))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.named_parameters() if not n.startswith("proj.")]

    def load_trunk(self, path: str | Path) -> None:
        """Load a torchvision-format state dict (the `fc.*` classifier is ignored)."""
        state = read_state_dict(path)
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("proj.")]
        if missing or unexpected:
            raise CirlabError(f"{path} does not match this ResNet: missing {missing[:3]}, unexpected {unexpected[:3]}")


def _build(block: type[BasicBlock] | type[Bottleneck], layers: list[int], spec: EncoderSpec, name: str
           ) -> ResNetEncoder:
    parse_options(NoOptions, spec.options, "image encoder", name)  # none: the trunk's weights are --image-weights
    enc = ResNetEncoder(block, layers, spec.out_dim)
    if spec.weights:
        enc.load_trunk(spec.weights)
    return enc


@IMAGE_ENCODERS.register("resnet18")
@declares(NoOptions)
def resnet18(spec: EncoderSpec) -> ResNetEncoder:
    return _build(BasicBlock, [2, 2, 2, 2], spec, "resnet18")


@IMAGE_ENCODERS.register("resnet50")
@declares(NoOptions)
def resnet50(spec: EncoderSpec) -> ResNetEncoder:
    return _build(Bottleneck, [3, 4, 6, 3], spec, "resnet50")
