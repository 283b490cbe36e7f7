"""The TIRG family: shapes, gradient flow, determinism, registry errors, save/load through a run directory."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from cirlab.losses import LOSSES
from cirlab.models import MODELS, build_model
from cirlab.training.config import TrainConfig
from cirlab.training.run_dir import load_model, save_config, save_model
from cirlab.utils.errors import CirlabError

CORE = ["imgonly", "textonly", "concat", "tirg", "tirg_lastconv"]
TEXTS = ["add large red circle to top-left", "remove blue triangle", "make middle-center object yellow",
         "make top-right rectangle large"]


def _batch(b: int = 4) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(b, 3, 64, 64, generator=g), (TEXTS * b)[:b], torch.randn(b, 3, 64, 64, generator=g)


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("encoder", ["small_cnn", "resnet18"])
def test_shapes_and_gradients(name: str, encoder: str) -> None:
    torch.manual_seed(0)
    opts = {"width": 8} if encoder == "small_cnn" else {}
    model = build_model(tiny_model_config(name, image_encoder=encoder, image_options=opts), texts=TEXTS)
    src, texts, tgt = _batch()
    assert model.compose(src, texts).shape == (4, 32)
    assert model.embed_target(tgt).shape == (4, 32)
    terms = model.training_losses(model.encode_image(src), model.encode_text(texts), model.encode_image(tgt),
                                  LOSSES.get("soft_triplet"))
    model.total_loss(terms).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    if name == "imgonly":  # the text never reaches the query
        no_grad = [n for n in no_grad if not n.startswith("text_encoder.")]
    if name == "textonly":  # the reference image never reaches the query (the target still trains the encoder)
        no_grad = [n for n in no_grad if not n.startswith("text_encoder.embedding")]
    assert no_grad == []


@pytest.mark.parametrize("name", CORE)
def test_deterministic_for_a_seed(name: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_model(tiny_model_config(name), texts=TEXTS).eval()
        src, texts, _ = _batch()
        outs.append(model.compose(src, texts))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_tirg_starts_from_the_paper_weights() -> None:
    model = build_model(tiny_model_config("tirg"), texts=TEXTS)
    assert model.weights.tolist() == [1.0, 10.0]
    assert model.norm_scale.item() == 4.0


def test_unknown_model_lists_choices() -> None:
    with pytest.raises(CirlabError, match="unknown model 'nope'; choose from: .*tirg"):
        MODELS.get("nope")


def test_run_directory_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = TrainConfig(model=tiny_model_config("tirg"))
    model = build_model(config.model, texts=TEXTS).eval()
    save_config(tmp_path, config)
    model.text_encoder.save_assets(tmp_path)
    save_model(tmp_path, model)
    loaded, loaded_config = load_model(tmp_path)
    assert loaded_config == config
    src, texts, _ = _batch()
    torch.testing.assert_close(loaded.compose(src, texts), model.compose(src, texts), rtol=0, atol=0)
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in tmp_path.iterdir())
