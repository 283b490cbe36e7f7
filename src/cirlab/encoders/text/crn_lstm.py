"""CRN's text model (`text_model.py` of yan9qu/crn, commit e4b9d937deed3f38ef2be55a18bd89d5651b8ca2):
word embedding -> one LSTM layer with a zero initial state -> the output of EVERY step, with no Linear after it.

Its vocabulary differs from TIRG's (`lstm`): `<UNK>` = 0, `<AND>` = 1, `<BOS>` = 2, `<EOS>` = 3, then the training
texts' words in order of first appearance; no rare-word threshold. Tokenising drops non-ASCII characters,
lower-cases and deletes every punctuation character without inserting a space (so `<BOS>` in a caption is the
word `bos`, as in the release), then splits on whitespace. Unknown words and right-padding are both id 0, and
the padded steps run through the LSTM like words (the release packs nothing and masks nothing); the mask
returned with the tokens only says which steps are real words.

`--text-option word_dim=768 hidden_dim=1024` are the release's sizes (the defaults). `text_dim` is not used: the
token width is `hidden_dim`, and `forward` (one vector per text, for models that want one) is the LSTM output at
the last word, again with no Linear.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cirlab.encoders.base import TEXT_ENCODERS, EncoderSpec, TextEncoder, declares
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json, write_json_atomic
from cirlab.utils.options import option, parse_options

VOCAB_FILE = "crn_vocab.json"
SPECIAL = ("<UNK>", "<AND>", "<BOS>", "<EOS>")
_DELETE_PUNCTUATION = str.maketrans({c: None for c in string.punctuation})


def tokenize(text: str) -> list[str]:
    """The release's `SimpleVocab.tokenize_text`: ASCII only, lower case, punctuation deleted, whitespace split."""
    text = str(text).encode("ascii", "ignore").decode("ascii")
    return text.lower().translate(_DELETE_PUNCTUATION).split()


class CRNVocabulary:
    """Word -> id in order of first appearance after the four special tokens; unknown words are 0."""

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.words: list[str] = list(SPECIAL)
        self.index: dict[str, int] = {w: i for i, w in enumerate(SPECIAL)}
        for w in words:
            if w not in self.index:
                self.index[w] = len(self.words)
                self.words.append(w)

    @classmethod
    def build(cls, texts: Iterable[str]) -> CRNVocabulary:
        return cls(tok for t in texts for tok in tokenize(t))

    def encode(self, text: str) -> list[int]:
        return [self.index.get(tok, 0) for tok in tokenize(text)]

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"words": self.words})

    @classmethod
    def load(cls, path: Path) -> CRNVocabulary:
        data = read_json(path, "CRN vocabulary")
        words = data.get("words") if isinstance(data, dict) else None
        if not isinstance(words, list) or tuple(words[:4]) != SPECIAL or not all(isinstance(w, str) for w in words):
            raise CirlabError(f"malformed CRN vocabulary {path}: expected {{'words': {list(SPECIAL)} + words}}")
        return cls(words[4:])


class CRNLSTMTextEncoder(TextEncoder):
    """The release's `TextLSTMModel` (its layer names: `embedding_layer`, `lstm`)."""

    def __init__(self, vocab: CRNVocabulary, word_dim: int = 768, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.vocab = vocab
        self.word_dim, self.hidden_dim = word_dim, hidden_dim
        self.out_dim = self.token_dim = hidden_dim
        self.embedding_layer = nn.Embedding(len(vocab), word_dim)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)

    def token_ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) ids right-padded with 0 to the longest text, and the (B,) word counts. An empty text counts as
        one `<UNK>` (the release pads it with 0s all the same; the count only keeps one real step)."""
        encoded = [self.vocab.encode(t) or [0] for t in texts]
        lengths = torch.tensor([len(ids) for ids in encoded])
        ids = torch.zeros(len(encoded), int(lengths.max()), dtype=torch.long)
        for i, row in enumerate(encoded):
            ids[i, : len(row)] = torch.tensor(row)
        return ids, lengths

    def forward_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = self.token_ids(texts)
        device = self.embedding_layer.weight.device
        out, _ = self.lstm(self.embedding_layer(ids.to(device)))  # zero initial state, every step, padding too
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        return out, mask.to(device)

    def forward(self, texts: list[str]) -> torch.Tensor:
        out, mask = self.forward_tokens(texts)
        return out[torch.arange(out.shape[0], device=out.device), mask.sum(1) - 1]

    def save_assets(self, run_dir: Path) -> None:
        self.vocab.save(Path(run_dir) / VOCAB_FILE)


@dataclass
class CRNLSTMOptions:
    """`--text-option`s of crn_lstm (defaults: the release's sizes)."""

    word_dim: int = option(768, "word embedding size")
    hidden_dim: int = option(1024, "LSTM width = the token feature width")


@TEXT_ENCODERS.register("crn_lstm")
@declares(CRNLSTMOptions)
def build_crn_lstm(spec: EncoderSpec, texts: list[str] | None = None, assets_dir: Path | None = None
                   ) -> CRNLSTMTextEncoder:
    """Build from training texts (new run) or from `crn_vocab.json` in a run directory (loading)."""
    opts = parse_options(CRNLSTMOptions, spec.options, "text encoder", "crn_lstm")
    if assets_dir is not None and (Path(assets_dir) / VOCAB_FILE).is_file():
        vocab = CRNVocabulary.load(Path(assets_dir) / VOCAB_FILE)
    elif texts is not None:
        vocab = CRNVocabulary.build(texts)
    else:
        raise CirlabError(f"the crn_lstm text encoder needs {VOCAB_FILE} in {assets_dir} or training texts")
    return CRNLSTMTextEncoder(vocab, word_dim=opts.word_dim, hidden_dim=opts.hidden_dim)
