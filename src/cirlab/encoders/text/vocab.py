"""Tokenisation and vocabulary of the TIRG text model, as google/tirg's `text_model.SimpleVocab` (@ c58daa0).

The released tokenizer keeps ASCII characters only (`café` -> `caf`), lower-cases, DELETES every
`string.punctuation` character without inserting a space (`t-shirt` -> `tshirt`) and splits on whitespace. Ids are
given in alphabetical order of the training tokens, after `<UNK>` = 0; there is no rare-word threshold, and unknown
words map to 0. This is the default (`tokenizer="tirg"`).

`tokenizer="spaced"` is the tokenizer of cirlab's earlier versions: punctuation becomes a space (`top-left` ->
`top`, `left`) and non-ASCII letters are kept. A `vocab.json` written before the file recorded its tokenizer was
made with it, so such a run directory loads with it and encodes texts exactly as when it was trained. It can be
chosen for a new run with `--text-option tokenizer=spaced`.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable
from pathlib import Path

from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json, write_json_atomic

_DELETE_PUNCTUATION = str.maketrans({c: None for c in string.punctuation})
_NON_WORD = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    """The release's `SimpleVocab.tokenize_text`: ASCII only, lower case, punctuation deleted, whitespace split."""
    text = str(text).encode("ascii", "ignore").decode("ascii")
    return text.lower().translate(_DELETE_PUNCTUATION).split()


def tokenize_spaced(text: str) -> list[str]:
    """cirlab's earlier tokenizer: lower case, every non-word character replaced by a space, whitespace split."""
    return _NON_WORD.sub(" ", str(text).lower()).split()


TOKENIZERS: dict[str, Callable[[str], list[str]]] = {"tirg": tokenize, "spaced": tokenize_spaced}
#: The tokenizer of a vocab.json that does not name one (written before the field existed).
LEGACY_TOKENIZER = "spaced"


def check_tokenizer(name: str, where: str = "tokenizer") -> str:
    if name not in TOKENIZERS:
        raise CirlabError(f"{where}: unknown tokenizer {name!r}; choose from: {', '.join(sorted(TOKENIZERS))}")
    return name


class Vocabulary:
    """Word <-> id map built from training texts; unknown words map to 0 (<UNK>)."""

    UNK = "<UNK>"

    def __init__(self, words: Iterable[str] = (), tokenizer: str = "tirg") -> None:
        self.tokenizer = check_tokenizer(tokenizer)
        self._tokenize = TOKENIZERS[tokenizer]
        self.words: list[str] = [self.UNK]
        self.index: dict[str, int] = {self.UNK: 0}
        for w in words:
            self.add(w)

    @classmethod
    def build(cls, texts: Iterable[str], tokenizer: str = "tirg") -> Vocabulary:
        """Every token of `texts`, in alphabetical order after <UNK> (the release's `SimpleVocab.build`)."""
        tokenize_fn = TOKENIZERS[check_tokenizer(tokenizer)]
        return cls(sorted({tok for t in texts for tok in tokenize_fn(t)} - {cls.UNK}), tokenizer)

    def add(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def tokenize(self, text: str) -> list[str]:
        return self._tokenize(text)

    def encode(self, text: str) -> list[int]:
        """Token ids; a text without any token becomes one <UNK>. (The release would read the LSTM output at
        index -1, i.e. the last padded step of whatever batch the text is in; one <UNK> step keeps a text's
        vector independent of its batch. No CIR dataset here has such texts.)"""
        ids = [self.index.get(tok, 0) for tok in self._tokenize(text)]
        return ids or [0]

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"tokenizer": self.tokenizer, "words": self.words})

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = read_json(path, "vocabulary")
        if not isinstance(data, dict) or not isinstance(data.get("words"), list) or data["words"][:1] != [cls.UNK] \
                or not all(isinstance(w, str) for w in data["words"]):
            raise CirlabError(f"malformed vocabulary {path}: expected {{'words': ['<UNK>', ...]}}")
        tokenizer = data.get("tokenizer", LEGACY_TOKENIZER)
        if not isinstance(tokenizer, str):
            raise CirlabError(f"malformed vocabulary {path}: 'tokenizer' must be a string")
        return cls(data["words"][1:], check_tokenizer(tokenizer, f"vocabulary {path}"))
