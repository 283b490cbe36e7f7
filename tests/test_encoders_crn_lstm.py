"""`crn_lstm`: yan9qu/crn's text model (vocabulary in order of first appearance after <UNK> <AND> <BOS> <EOS>,
punctuation deleted, every LSTM step returned, padding run through the LSTM, no Linear)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cirlab.encoders import EncoderSpec, resolve_text_encoder
from cirlab.encoders.text.crn_lstm import CRNVocabulary, tokenize
from cirlab.utils.errors import CirlabError


def _encoder(texts: list[str] | None, assets_dir: Path | None = None, **options: int) -> torch.nn.Module:
    spec = EncoderSpec(options={"word_dim": 6, "hidden_dim": 8, **options})
    return resolve_text_encoder("crn_lstm")(spec, texts=texts, assets_dir=assets_dir)


def test_vocabulary_is_in_order_of_first_appearance_after_the_special_tokens() -> None:
    vocab = CRNVocabulary.build(["Zebra on the left, zebra!", "<BOS> a café-like  room <AND> the end <EOS>"])
    assert vocab.words == ["<UNK>", "<AND>", "<BOS>", "<EOS>", "zebra", "on", "the", "left", "bos", "a",
                           "caflike", "room", "and", "end", "eos"]
    assert tokenize("Café-Like, ROOM!") == ["caflike", "room"]
    assert vocab.encode("the unseen zebra") == [6, 0, 4]


def test_every_step_is_returned_and_padding_runs_through_the_lstm() -> None:
    torch.manual_seed(0)
    encoder = _encoder(["red circle on the left", "blue"]).eval()
    tokens, mask = encoder.forward_tokens(["blue", "red circle on the left"])
    assert tokens.shape == (2, 5, 8) and mask.tolist() == [[True] + [False] * 4, [True] * 5]
    ids, lengths = encoder.token_ids(["blue", "red circle on the left"])
    assert ids[0].tolist() == [encoder.vocab.index["blue"], 0, 0, 0, 0] and lengths.tolist() == [1, 5]
    alone, _ = encoder.lstm(encoder.embedding_layer(ids[:1]))
    torch.testing.assert_close(tokens[:1], alone)  # the padded steps are the LSTM's outputs on id 0, not zeros
    assert tokens[0, 1:].abs().sum() > 0
    torch.testing.assert_close(encoder(["blue", "red circle on the left"]), tokens[[0, 1], [0, 4]])


def test_vocabulary_round_trips_through_the_run_directory(tmp_path: Path) -> None:
    built = _encoder(["w1 w2", "w3"])
    built.save_assets(tmp_path)
    loaded = _encoder(None, assets_dir=tmp_path)
    assert loaded.vocab.words == built.vocab.words
    with pytest.raises(CirlabError, match="crn_vocab.json"):
        _encoder(None, assets_dir=tmp_path / "empty")
    with pytest.raises(CirlabError, match="unknown"):
        _encoder(["w1"], glove=1)
