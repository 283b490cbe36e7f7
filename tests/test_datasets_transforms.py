"""Preprocessing: CLIP4Cir's target pad (to a 1.25 aspect ratio), the square pad, and the option check."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cirlab.datasets.transforms import ImageTransform, target_pad
from cirlab.utils.errors import CirlabError


def test_target_pad_pads_a_long_image_to_the_target_ratio() -> None:
    tall = Image.new("RGB", (100, 200), (255, 255, 255))
    padded = target_pad(tall)  # 200 / 1.25 = 160 wide: 30 black columns each side
    assert padded.size == (160, 200)
    arr = np.asarray(padded)
    assert arr[:, :30].max() == 0 and arr[:, 130:].max() == 0 and arr[:, 30:130].min() == 255
    assert target_pad(tall, ratio=1.0).size == (200, 200)


def test_target_pad_leaves_near_square_images_alone() -> None:
    img = Image.new("RGB", (110, 100))
    assert target_pad(img) is img


def test_transform_with_pad_gives_the_requested_size() -> None:
    x = ImageTransform(size=32, pad="target_pad")(Image.new("RGB", (40, 90), (10, 200, 30)))
    assert tuple(x.shape) == (3, 32, 32)


def test_unknown_pad_is_a_user_error() -> None:
    with pytest.raises(CirlabError, match="--pad must be one of none, target_pad, square_pad"):
        ImageTransform(pad="letterbox")
