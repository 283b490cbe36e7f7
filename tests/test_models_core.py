"""The TIRG family: shapes, gradient flow, determinism, registry errors, save/load through a model folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config

from cirlab.datasets.transforms import Preprocess
from cirlab.losses import LOSSES
from cirlab.models import MODELS, CompositionModel, build_model
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


def test_model_folder_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(tiny_model_config("tirg"), texts=TEXTS).eval()
    model.save_pretrained(tmp_path, Preprocess(size=64))
    loaded = CompositionModel.from_pretrained(tmp_path)
    assert loaded.config == model.config and not loaded.training
    src, texts, _ = _batch()
    torch.testing.assert_close(loaded.compose(src, texts), model.compose(src, texts), rtol=0, atol=0)
    assert not any(p.suffix in (".pt", ".pth", ".pkl") for p in tmp_path.iterdir())


# google/tirg's released weights and text model ---------------------------------------------------------------
def _release_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's head under the release's names, as a released checkpoint would hold it (a as a 4-vector)."""
    state = model.state_dict()
    released = {ref: state[ours].clone() for ours, ref in model.reference_names().items()}
    if model.mixing:
        released["a"] = torch.cat([getattr(model, model.mixing).detach(), torch.ones(2)])
    return released


@pytest.mark.parametrize("name", CORE)
def test_release_named_weights_load_and_give_the_same_queries(name: str) -> None:
    torch.manual_seed(0)
    source = build_model(tiny_model_config(name), texts=TEXTS)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.manual_seed(1)
    loaded = build_model(tiny_model_config(name), texts=TEXTS)
    loaded.load_state_dict({k: v for k, v in source.state_dict().items() if k.startswith(("image_", "text_"))},
                           strict=False)
    loaded.load_reference_state_dict(_release_state(source))
    src, texts, _ = _batch()
    torch.testing.assert_close(loaded.eval().compose(src, texts), source.eval().compose(src, texts), rtol=0, atol=0)
    assert set(loaded.reference_grads()) >= {"normalization_layer.norm_s"} | ({"a"} if loaded.mixing else set())


def test_release_names_follow_google_tirg() -> None:
    tirg = build_model(tiny_model_config("tirg"), texts=TEXTS)
    names = tirg.reference_names()
    assert names["gate.2.weight"] == "gated_feature_composer.3.weight"
    assert names["residual.4.bias"] == "res_info_composer.5.bias"
    assert names["norm_scale"] == "normalization_layer.norm_s"
    assert build_model(tiny_model_config("concat"), texts=TEXTS).reference_names()["mlp.6.weight"] == \
        "composer.m.6.weight"
    released = _release_state(tirg)
    released["extra.weight"] = torch.zeros(1)
    with pytest.raises(CirlabError, match="not the released model's state_dict.*extra.weight"):
        tirg.load_reference_state_dict(released)
    del released["extra.weight"], released["a"]
    with pytest.raises(CirlabError, match="not the released model's state_dict"):
        tirg.load_reference_state_dict(released)


def test_tirg_vocabulary_is_the_released_simple_vocab() -> None:
    from cirlab.encoders.text.vocab import Vocabulary, tokenize

    assert tokenize("Make the T-shirt CAFÉ-like, please!") == ["make", "the", "tshirt", "caflike", "please"]
    vocab = Vocabulary.build(["make it red", "Add a red cube", "zebra-like"])
    assert vocab.words == ["<UNK>", "a", "add", "cube", "it", "make", "red", "zebralike"]
    assert vocab.encode("make the cube RED!") == [5, 0, 3, 6]
    assert vocab.encode("!!!") == [0]


def test_saved_vocabularies_load_with_their_own_tokenizer(tmp_path: Path) -> None:
    """A vocab.json from before the file named its tokenizer keeps cirlab's earlier one ("top-left" = 2 words);
    a new one records the release's; an unknown name is one clear error."""
    from cirlab.encoders.text.lstm import VOCAB_FILE
    from cirlab.encoders.text.vocab import Vocabulary

    (tmp_path / VOCAB_FILE).write_text(json.dumps({"words": ["<UNK>", "top", "left", "topleft"]}))
    legacy = Vocabulary.load(tmp_path / VOCAB_FILE)
    assert legacy.tokenizer == "spaced" and legacy.encode("Top-left") == [1, 2]
    model = build_model(tiny_model_config("tirg"), assets_dir=tmp_path)
    assert model.text_encoder.vocab.encode("top-left") == [1, 2]
    Vocabulary.build(["top-left"]).save(tmp_path / VOCAB_FILE)
    fresh = Vocabulary.load(tmp_path / VOCAB_FILE)
    assert fresh.tokenizer == "tirg" and fresh.words == ["<UNK>", "topleft"] and fresh.encode("Top-left") == [1]
    (tmp_path / VOCAB_FILE).write_text(json.dumps({"tokenizer": "bpe", "words": ["<UNK>"]}))
    with pytest.raises(CirlabError, match="unknown tokenizer 'bpe'; choose from: spaced, tirg"):
        build_model(tiny_model_config("tirg"), assets_dir=tmp_path)
    spaced = build_model(tiny_model_config("tirg", text_options={"word_dim": 8, "hidden_dim": 8,
                                                                 "tokenizer": "spaced"}), texts=["top-left"])
    assert spaced.text_encoder.vocab.words == ["<UNK>", "left", "top"]
