"""Image preprocessing in plain PIL + PyTorch (torchvision is not required anywhere)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from cirlab.utils.errors import CirlabError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PAD_MODES = ("none", "target_pad", "square_pad")


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """uint8 HxWx3 PIL image -> float CxHxW tensor in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def target_pad(img: Image.Image, ratio: float = 1.25) -> Image.Image:
    """CLIP4Cir's "target pad": zero-pad a long image symmetrically until its aspect ratio is `ratio`.

    Images already closer to square than `ratio` are returned unchanged; `ratio=1` gives a square pad.
    The later resize + centre crop then loses less of a tall dress or a wide shoe.
    """
    w, h = img.size
    if max(w, h) / min(w, h) < ratio:
        return img
    wanted = max(w, h) / ratio
    pad_x, pad_y = max(int((wanted - w) / 2), 0), max(int((wanted - h) / 2), 0)
    if not pad_x and not pad_y:
        return img
    canvas = Image.new("RGB", (w + 2 * pad_x, h + 2 * pad_y), (0, 0, 0))
    canvas.paste(img.convert("RGB"), (pad_x, pad_y))
    return canvas


@dataclass
class ImageTransform:
    """Resize (shorter side) -> crop (random when training) -> optional flip -> normalise.

    `size=0` keeps the image as it is (CSS images are already at their training size).
    """

    size: int = 224
    train: bool = False
    flip: bool = True
    pad: str = "none"  # "none" | "target_pad" (CLIP4Cir, ratio 1.25) | "square_pad" (ratio 1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.pad not in PAD_MODES:
            raise CirlabError(f"--pad must be one of {', '.join(PAD_MODES)}, not {self.pad!r}")

    def __call__(self, img: Image.Image, rng: np.random.Generator | None = None) -> torch.Tensor:
        if self.pad == "target_pad":
            img = target_pad(img)
        elif self.pad == "square_pad":
            img = target_pad(img, ratio=1.0)
        if self.size:
            img = self._resize_crop(img, rng)
        x = pil_to_tensor(img)
        if self.train and self.flip and rng is not None and rng.random() < 0.5:
            x = x.flip(-1)
        return normalize(x, self.mean, self.std)

    def _resize_crop(self, img: Image.Image, rng: np.random.Generator | None) -> Image.Image:
        w, h = img.size
        scale = self.size / min(w, h)
        if self.train:
            scale *= 1.14  # TIRG/CLIP-style: resize a little larger, then crop randomly
        nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC)
        if self.train and rng is not None:
            left = int(rng.integers(0, nw - self.size + 1))
            top = int(rng.integers(0, nh - self.size + 1))
        else:
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
        return img.crop((left, top, left + self.size, top + self.size))


@dataclass(frozen=True)
class Preprocess:
    """The evaluation-time preprocessing a model expects, saved as the "preprocess" block of its folder's
    config.json so that a loaded model never depends on a dataset class's defaults: resize the shorter side to
    `size` and centre-crop (0 keeps the image as it is), optional `pad` first, then normalise by `mean`/`std`."""

    size: int = 224
    pad: str = "none"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise CirlabError(f"size must be a non-negative integer, not {self.size!r}")
        if self.pad not in PAD_MODES:
            raise CirlabError(f"pad must be one of {', '.join(PAD_MODES)}, not {self.pad!r}")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (not isinstance(values, list | tuple) or len(values) != 3
                    or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)):
                raise CirlabError(f"{name} must be three numbers (R, G, B), not {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise CirlabError(f"std must be positive, not {self.std!r}")

    def transform(self, train: bool = False, flip: bool = True) -> ImageTransform:
        """The transform: evaluation's by default; `train` adds random crops (and flips when `flip`)."""
        return ImageTransform(size=self.size, train=train, flip=flip, pad=self.pad, mean=self.mean, std=self.std)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "preprocess") -> Preprocess:
        """A config.json "preprocess" block, checked field by field (CirlabError naming `where`)."""
        if not isinstance(data, dict):
            raise CirlabError(f"{where} must be a JSON object with size, pad, mean and std")
        unknown = sorted(set(data) - {"size", "pad", "mean", "std"})
        if unknown:
            raise CirlabError(f"{where} has unknown fields: {unknown}")
        try:
            return cls(**data)
        except CirlabError as exc:
            raise CirlabError(f"{where}: {exc}") from None


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s
