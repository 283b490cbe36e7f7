"""Image preprocessing in plain PIL + PyTorch (torchvision is not required anywhere)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        x = pil_to_tensor(self.geometry(img, rng))
        if self.train and self.flip and rng is not None and rng.random() < 0.5:
            x = x.flip(-1)
        return normalize(x, self.mean, self.std)

    @property
    def deterministic(self) -> bool:
        """True when the output depends on the image only (no random crop or flip, so no rng is drawn): the
        decoded pixels can then be cached once per image (`pixels`) and normalised a batch at a time."""
        return not self.train or (not self.size and not self.flip)

    def geometry(self, img: Image.Image, rng: np.random.Generator | None = None) -> Image.Image:
        """The pixel part of the transform: optional pad, then resize and crop (random when training)."""
        if self.pad == "target_pad":
            img = target_pad(img)
        elif self.pad == "square_pad":
            img = target_pad(img, ratio=1.0)
        if self.size:
            img = self._resize_crop(img, rng)
        return img

    def pixels(self, img: Image.Image) -> np.ndarray:
        """uint8 HxWx3 pixels of a deterministic transform's output, before normalisation (`to_batch` finishes
        it); the same values `__call__` normalises."""
        if not self.deterministic:
            raise ValueError("pixels() needs a deterministic transform (no random crop or flip)")
        return np.asarray(self.geometry(img).convert("RGB"), dtype=np.uint8)

    def to_batch(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 BxHxWx3 pixels (from `pixels`) -> float Bx3xHxW, normalised: element for element the same
        arithmetic as stacking `__call__`'s outputs, and the same contiguous layout."""
        x = pixels.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
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


#: The most memory a `PixelCache` may take (a 64 px CSS image takes 12 KiB: 87,000 of them fit).
PIXEL_CACHE_BYTES = 1 << 30


class PixelCache:
    """The uint8 pixels of images 0..count-1 after a deterministic transform's pad/resize/crop, each decoded on
    first use and kept, so that a batch is one gather and one normalisation (`batch`) instead of per-image PIL
    and tensor work. Equal, bit for bit, to stacking the transform's outputs. Holds count x size x size x 3 bytes
    at most (`fits` says whether that is within `PIXEL_CACHE_BYTES`); pages are only taken as images are filled."""

    def __init__(self, transform: ImageTransform, load: Callable[[int], Image.Image], count: int) -> None:
        if not self.fits(transform, count):
            raise ValueError("PixelCache needs a deterministic transform of a fixed size within PIXEL_CACHE_BYTES")
        self.transform, self.load = transform, load
        self.pixels = np.empty((count, transform.size, transform.size, 3), dtype=np.uint8)
        self.filled = np.zeros(count, dtype=bool)

    @staticmethod
    def fits(transform: ImageTransform, count: int) -> bool:
        """Whether `count` images through `transform` can be cached: deterministic, a fixed output size (not
        size=0, which keeps each image's own size) and within `PIXEL_CACHE_BYTES`."""
        return transform.deterministic and transform.size > 0 and count * 3 * transform.size ** 2 <= PIXEL_CACHE_BYTES

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """Images `indices` as one normalised float (B, 3, size, size) batch."""
        idx = np.asarray(indices, dtype=np.int64)
        for i in np.unique(idx[~self.filled[idx]]).tolist():
            self.pixels[i] = self.transform.pixels(self.load(i))
            self.filled[i] = True
        return self.transform.to_batch(torch.from_numpy(self.pixels[idx]))


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x - m) / s
