"""Feature cache for frozen encoders (CLIP4Cir's stage 2): encode every image and text of a split once, into
the run directory, then train and evaluate the composition module on the cached features.

Valid only when every encoder is frozen (`--freeze-image --freeze-text`): frozen encoders stay in eval mode
(see `CompositionModel.train`), so their features are the same whether cached or recomputed, and a run trained
on the cache evaluates the same end to end. Images are encoded with the evaluation transform: there is no
training-time augmentation on cached features (CSS has none anyway).

Layout: `feature_cache/<split>/images.safetensors` (one row per dataset image), `texts.safetensors` (one row
per distinct text), `texts.json` (those texts, in row order), `meta.json` (encoders, image size, seconds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm import tqdm

from cirlab.datasets import CIRDataset
from cirlab.datasets.transforms import ImageTransform
from cirlab.models import CompositionModel
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic

CACHE_DIR = "feature_cache"
Features = Any


def check_cacheable(model: CompositionModel) -> None:
    """Raise unless every encoder is frozen (a cached feature must not change during training)."""
    for encoder in model.image_encoders() + model.text_encoders():
        trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
        if trainable:
            raise CirlabError(f"--feature-cache needs frozen encoders (--freeze-image --freeze-text); "
                              f"{type(encoder).__name__}.{trainable[0]} would train")


def _flatten(feats: Features) -> dict[str, torch.Tensor]:
    return {"": feats} if isinstance(feats, torch.Tensor) else dict(feats)


def _unflatten(rows: dict[str, torch.Tensor]) -> Features:
    return rows[""] if list(rows) == [""] else rows


def _stack(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-batch feature dicts; token features of different lengths are zero-padded along dim 1."""
    out = {}
    for key in chunks[0]:
        parts = [c[key] for c in chunks]
        if parts[0].dim() >= 2 and len({p.shape[1] for p in parts}) > 1:
            width = max(p.shape[1] for p in parts)
            parts = [F.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
        out[key] = torch.cat(parts).contiguous()
    return out


class FeatureCache:
    """Encoder outputs for every image of a split and for a set of texts, on the CPU."""

    def __init__(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor], text_list: list[str]) -> None:
        self.images, self.texts = images, texts
        self.text_rows = {t: i for i, t in enumerate(text_list)}
        self.text_list = text_list

    def image_feats(self, indices: Sequence[int] | torch.Tensor, device: torch.device | None = None) -> Features:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return _unflatten({k: v[idx].to(device) if device else v[idx] for k, v in self.images.items()})

    def text_feats(self, texts: Sequence[str], device: torch.device | None = None) -> Features:
        missing = [t for t in texts if t not in self.text_rows]
        if missing:
            raise CirlabError(f"text not in the feature cache: {missing[0]!r}")
        idx = torch.tensor([self.text_rows[t] for t in texts], dtype=torch.long)
        return _unflatten({k: v[idx].to(device) if device else v[idx] for k, v in self.texts.items()})

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        save_tensors_atomic(directory / "images.safetensors", self.images)
        save_tensors_atomic(directory / "texts.safetensors", self.texts)
        write_json_atomic(directory / "texts.json", self.text_list)
        write_json_atomic(directory / "meta.json", meta)

    @classmethod
    def load(cls, directory: Path) -> FeatureCache:
        return cls(load_tensors(directory / "images.safetensors"), load_tensors(directory / "texts.safetensors"),
                   list(read_json(directory / "texts.json", "feature-cache texts")))


@torch.no_grad()
def encode_all(model: CompositionModel, dataset: CIRDataset, transform: ImageTransform, texts: Sequence[str],
               batch_size: int = 64, progress: bool = True) -> FeatureCache:
    """Run the frozen encoders once over every image of `dataset` and every text in `texts`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chunks = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="cache images", disable=not progress, leave=False):
        batch = dataset.load_batch(range(start, min(start + batch_size, len(dataset))), transform)
        chunks.append({k: v.cpu() for k, v in _flatten(model.encode_image(batch.to(device))).items()})
    text_list = list(dict.fromkeys(texts))
    text_chunks = [{k: v.cpu() for k, v in _flatten(model.encode_text(text_list[s:s + batch_size])).items()}
                   for s in tqdm(range(0, len(text_list), batch_size), desc="cache texts", disable=not progress,
                                 leave=False)]
    model.train(was_training)
    return FeatureCache(_stack(chunks), _stack(text_chunks), text_list)


def build_feature_cache(model: CompositionModel, dataset: CIRDataset, transform: ImageTransform, run_dir: Path,
                        split: str, texts: Sequence[str], progress: bool = True) -> FeatureCache:
    """Load `run_dir/feature_cache/<split>` if it matches this model and data, else encode and save it."""
    check_cacheable(model)
    directory = Path(run_dir) / CACHE_DIR / split
    cfg = model.config
    key = {"image_encoder": cfg.image_encoder, "text_encoder": cfg.text_encoder, "image_options": cfg.image_options,
           "text_options": cfg.text_options, "image_size": transform.size, "pad": transform.pad,
           "images": len(dataset), "texts": len(set(texts))}
    if (directory / "meta.json").is_file():
        meta = read_json(directory / "meta.json", "feature-cache meta")
        if {k: meta.get(k) for k in key} == key:
            return FeatureCache.load(directory)
    started = time.perf_counter()
    cache = encode_all(model, dataset, transform, texts, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    cache.save(directory, {**key, "seconds": round(time.perf_counter() - started, 2)})
    return cache


class CachedPairBatches(Dataset):
    """Item i = batch i as (source rows, texts, target rows): the same pairs as the image pipeline draws with
    rng([seed, i]), so a cached run sees exactly the pairs an uncached one would."""

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
        return (self.cache.image_feats(src, device), self.cache.text_feats(texts, device),
                self.cache.image_feats(tgt, device))
