"""Shared fixtures: a tiny generated CSS set and tiny model configs that train in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cirlab.models import ModelConfig

torch.set_num_threads(1)


def tiny_model_config(name: str = "tirg", **changes: object) -> ModelConfig:
    """A model small enough for unit tests (32-d embeddings, an 8-wide CNN, a 32-unit LSTM)."""
    base = dict(name=name, image_encoder="small_cnn", embed_dim=32, text_dim=32, image_options={"width": 8},
                text_options={"word_dim": 16, "hidden_dim": 32})
    base.update(changes)
    return ModelConfig(**base)


@pytest.fixture(scope="session")
def tiny_css(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 200 + 100 image CSS set in TIRG's format, generated once per test session."""
    from cirlab.datasets.css_synth import CSSSynthConfig, generate_css

    root = tmp_path_factory.mktemp("css")
    generate_css(root, CSSSynthConfig(seed=1, train_images=200, test_images=100), progress=False)
    return root
