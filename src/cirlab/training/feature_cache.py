"""Training on a feature cache (`--feature-cache`): batches of cached encoder outputs instead of images.

The cache itself (files, building, reading) is `cirlab.inference.feature_cache`, shared with evaluation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from cirlab.datasets import CIRDataset
from cirlab.inference.embedding import Features
from cirlab.inference.feature_cache import FeatureCache, encode_texts_eval
from cirlab.models import CompositionModel


class CachedPairBatches(Dataset):
    """Item i = batch i as (source rows, texts, target rows): the same pairs as the image pipeline draws with
    rng([seed, i]), so a cached run sees exactly the pairs an uncached one would. A text the cache lacks is
    encoded on first use by the model's frozen text encoder in eval mode (`encode_texts_eval`)."""

    def __init__(self, dataset: CIRDataset, cache: FeatureCache, batch_size: int, seed: int) -> None:
        self.dataset, self.cache, self.batch_size, self.seed = dataset, cache, batch_size, seed

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, i: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        pairs = self.dataset.sample_pairs(np.random.default_rng([self.seed, i]), self.batch_size)
        return (torch.tensor([p.source for p in pairs]), [p.text for p in pairs],
                torch.tensor([p.target for p in pairs]))

    def features(self, model: CompositionModel, batch: tuple[torch.Tensor, list[str], torch.Tensor],
                 device: torch.device) -> tuple[Features, Features, Features]:
        src, texts, tgt = batch
        return (self.cache.image_feats(src, device),
                self.cache.text_feats(texts, device, encode=lambda t: encode_texts_eval(model, t)),
                self.cache.image_feats(tgt, device))
