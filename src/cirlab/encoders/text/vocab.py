"""Tokenisation and vocabulary of the TIRG text model: lower-case, strip punctuation, <UNK> = 0."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from cirlab.utils.errors import CirlabError
from cirlab.utils.io import read_json, write_json_atomic

_PUNCT = re.compile(r"[^\w\s]")


def tokenize(text: str) -> list[str]:
    """TIRG's tokenizer: lower-case, drop punctuation, split on whitespace."""
    return _PUNCT.sub(" ", str(text).lower()).split()


class Vocabulary:
    """Word <-> id map built from training texts; unknown words map to 0 (<UNK>)."""

    UNK = "<UNK>"

    def __init__(self, words: Iterable[str] = ()) -> None:
        self.words: list[str] = [self.UNK]
        self.index: dict[str, int] = {self.UNK: 0}
        for w in words:
            self.add(w)

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(tok for t in texts for tok in tokenize(t))
        return cls(w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if c >= min_count)

    def add(self, word: str) -> int:
        if word not in self.index:
            self.index[word] = len(self.words)
            self.words.append(word)
        return self.index[word]

    def encode(self, text: str) -> list[int]:
        ids = [self.index.get(tok, 0) for tok in tokenize(text)]
        return ids or [0]

    def __len__(self) -> int:
        return len(self.words)

    def save(self, path: Path) -> None:
        write_json_atomic(path, {"words": self.words})

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        data = read_json(path, "vocabulary")
        if not isinstance(data, dict) or not isinstance(data.get("words"), list) or data["words"][:1] != [cls.UNK]:
            raise CirlabError(f"malformed vocabulary {path}: expected {{'words': ['<UNK>', ...]}}")
        return cls(data["words"][1:])
