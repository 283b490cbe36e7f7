"""Helpers for the index, query, API, browser and interactive-eval tests: a tiny run and tiny image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from conftest import tiny_model_config
from PIL import Image

from cirlab.models import build_model
from cirlab.training import TrainConfig, open_dataset
from cirlab.training.run_dir import run_preprocess, save_run_model


def make_tiny_run(css_root: Path, run_dir: Path, seed: int = 0) -> Path:
    """A valid run directory (config, vocabulary, weights) of an untrained tiny TIRG over `css_root`."""
    config = TrainConfig(dataset="css", data_root=str(css_root), model=tiny_model_config(), device="cpu")
    texts = open_dataset(config, "train").train_texts()
    torch.manual_seed(seed)
    model = build_model(config.model, texts=texts)
    save_run_model(run_dir, config, model, run_preprocess(config, model))
    return run_dir


def make_image_dir(directory: Path, count: int, start: int = 0, size: int = 48) -> Path:
    """`count` small distinct PNGs (`img_<i>.png`, two levels deep for some) under `directory`."""
    rng = np.random.default_rng(start)
    for i in range(start, start + count):
        folder = directory / ("nested" if i % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:03d}.png")
    return directory
