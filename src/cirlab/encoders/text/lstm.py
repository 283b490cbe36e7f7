"""TIRG's text model: word embedding 512 -> one LSTM layer (hidden 512) -> output at the last valid step
-> Dropout(0.1) -> Linear(512 -> out_dim). `--text-option glove=true` initialises the word embedding from GloVe
6B 50-d (shipped on PyPI; word_dim becomes 50); the vectors are read only when a new run starts, a reloaded
run takes its embedding from model.safetensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from cirlab.encoders.base import TEXT_ENCODERS, EncoderSpec, TextEncoder
from cirlab.encoders.text.glove import GLOVE_DIM, glove_matrix
from cirlab.encoders.text.vocab import Vocabulary
from cirlab.utils.errors import CirlabError

VOCAB_FILE = "vocab.json"


class LSTMTextEncoder(TextEncoder):
    def __init__(self, vocab: Vocabulary, out_dim: int = 512, word_dim: int = 512, hidden_dim: int = 512,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab = vocab
        self.word_dim, self.hidden_dim = word_dim, hidden_dim
        self.out_dim = out_dim
        self.token_dim = hidden_dim
        self.embedding = nn.Embedding(len(vocab), word_dim)
        self.lstm = nn.LSTM(word_dim, hidden_dim, batch_first=True)
        self.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))

    def _ids(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        seqs = [torch.tensor(self.vocab.encode(t), dtype=torch.long) for t in texts]
        lengths = torch.tensor([len(s) for s in seqs])
        return pad_sequence(seqs, batch_first=True), lengths

    def forward_tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, lengths = self._ids(texts)
        ids = ids.to(self.embedding.weight.device)
        out, _ = self.lstm(self.embedding(ids))
        mask = torch.arange(ids.shape[1])[None, :] < lengths[:, None]
        return out, mask.to(out.device)

    def forward(self, texts: list[str]) -> torch.Tensor:
        out, mask = self.forward_tokens(texts)
        last = mask.sum(1) - 1
        return self.fc(out[torch.arange(out.shape[0], device=out.device), last])

    def save_assets(self, run_dir: Path) -> None:
        self.vocab.save(Path(run_dir) / VOCAB_FILE)

    def config(self) -> dict[str, Any]:
        return {"word_dim": self.word_dim, "hidden_dim": self.hidden_dim}


@TEXT_ENCODERS.register("lstm")
def build_lstm(spec: EncoderSpec, texts: list[str] | None = None, assets_dir: Path | None = None) -> LSTMTextEncoder:
    """Build from training texts (new run) or from `vocab.json` in a run directory (loading)."""
    loading = assets_dir is not None and (Path(assets_dir) / VOCAB_FILE).is_file()
    if loading:
        vocab = Vocabulary.load(Path(assets_dir) / VOCAB_FILE)
    elif texts is not None:
        vocab = Vocabulary.build(texts)
    else:
        raise CirlabError(f"the LSTM text encoder needs {VOCAB_FILE} in {assets_dir} or training texts")
    opts = spec.options
    glove = str(opts.get("glove", False)).lower() in ("1", "true", "yes")
    word_dim = int(opts.get("word_dim", GLOVE_DIM if glove else 512))
    if glove and word_dim != GLOVE_DIM:
        raise CirlabError(f"--text-option glove=true needs word_dim={GLOVE_DIM}, got {word_dim}")
    encoder = LSTMTextEncoder(vocab, out_dim=spec.out_dim, word_dim=word_dim,
                              hidden_dim=int(opts.get("hidden_dim", 512)), dropout=float(opts.get("dropout", 0.1)))
    if glove and texts is not None and not loading:
        rows, _ = glove_matrix(vocab.words)
        with torch.no_grad():
            encoder.embedding.weight.copy_(rows)
    return encoder
