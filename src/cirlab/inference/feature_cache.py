"""Feature cache for frozen encoders (CLIP4Cir's stage 2): encode every image and text of a split once, into
the run directory, then train and evaluate the composition module on the cached features (training reads it
through `cirlab.training.feature_cache.CachedPairBatches`, evaluation through `cirlab.evaluation.make_cached_eval_fn`).

Valid only when every encoder is frozen (`--freeze-image --freeze-text`): frozen encoders stay in eval mode
(see `CompositionModel.train`), so their features are the same whether cached or recomputed, and a run trained
on the cache evaluates the same end to end. Images are encoded with the evaluation transform: there is no
training-time augmentation on cached features (CSS has none anyway).

Layout: `feature_cache/<split>/images.safetensors` (one row per dataset image), `texts.safetensors` (one row
per distinct text the dataset lists: `train_texts()`, or the eval split's query texts), `texts.json` (those
texts, in row order), `meta.json` (encoders, image size, seconds), and `extras-NNNNN.safetensors` + `.json`:
training texts that `sample_pairs` produces beyond that list (FashionIQ's swapped caption order, Fashion200k's
"replace X with Y", MIT-States' adjectives), encoded on first use with the same frozen encoders in eval mode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cirlab.datasets import CIRDataset
from cirlab.datasets.transforms import ImageTransform
from cirlab.inference.embedding import Features, map_batches
from cirlab.models import CompositionModel
from cirlab.utils.errors import CirlabError
from cirlab.utils.io import load_tensors, read_json, save_tensors_atomic, write_json_atomic

CACHE_DIR = "feature_cache"
EXTRAS = "extras"  # shards of texts encoded on demand: extras-00000.safetensors + .json, ...
FLUSH_EVERY = 512  # on-demand texts held in memory before they are saved as the next shard


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
    """Encoder outputs for every image of a split and for a set of texts, on the CPU.

    Texts are held in blocks: block 0 is the split's listed texts (`texts.json`), later blocks are texts encoded
    on demand (`text_feats(..., encode=...)`: a training pair's text that the dataset's `train_texts()` does not
    list, such as FashionIQ's swapped caption order), saved as `extras-NNNNN` shards every `FLUSH_EVERY` texts
    and on `flush()`. Each on-demand text is encoded alone (a batch of one), so its features depend on the text
    only, never on when it was first drawn, what else was encoded with it, or whether a resumed run read it back
    from a shard: training stays deterministic and resumable. Token features of several lengths are zero-padded
    along dim 1; a batch is padded to the widest of its rows (block 0's rows count at block 0's full width).
    """

    def __init__(self, images: dict[str, torch.Tensor], texts: dict[str, torch.Tensor], text_list: list[str],
                 directory: Path | None = None) -> None:
        self.images = images
        self.text_list = list(text_list)  # every cached text in row order: the listed ones, then on-demand ones
        self.listed = len(self.text_list)
        self.directory = Path(directory) if directory is not None else None
        self.blocks: list[dict[str, torch.Tensor]] = []
        self.widths: list[dict[str, torch.Tensor]] = []
        self.text_rows: dict[str, tuple[int, int]] = {}
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self._add_block(texts, self.text_list, _full_widths(texts))

    def _add_block(self, rows: dict[str, torch.Tensor], texts: list[str], widths: dict[str, torch.Tensor]) -> None:
        block = len(self.blocks)
        self.blocks.append(rows)
        self.widths.append(widths)
        self.text_rows.update((t, (block, i)) for i, t in enumerate(texts))

    def image_feats(self, indices: Sequence[int] | torch.Tensor, device: torch.device | None = None) -> Features:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return _unflatten({k: v[idx].to(device) if device else v[idx] for k, v in self.images.items()})

    def text_feats(self, texts: Sequence[str], device: torch.device | None = None,
                   encode: Callable[[list[str]], Features] | None = None) -> Features:
        """Features of `texts` in order; texts not yet cached are encoded one at a time with `encode` (without
        it they are an error)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self.text_rows and t not in self.pending]
        if missing:
            if encode is None:
                raise CirlabError(f"text not in the feature cache: {missing[0]!r}")
            for text in missing:
                self.pending[text] = {k: v.detach().cpu() for k, v in _flatten(encode([text])).items()}
                self.text_list.append(text)
            if len(self.pending) >= FLUSH_EVERY:
                self.flush()
        rows = self._gather(texts)
        return _unflatten({k: v.to(device) if device else v for k, v in rows.items()})

    def _gather(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Rows of `texts`, grouped by block for one indexing per block, padded to the widest row, in order."""
        groups: dict[int, list[int]] = {}
        for pos, text in enumerate(texts):
            groups.setdefault(self.text_rows[text][0] if text in self.text_rows else -1, []).append(pos)
        parts, part_widths, order = [], [], []
        for block, positions in groups.items():
            if block < 0:
                rows = [self.pending[texts[p]] for p in positions]
                parts.append(_stack(rows))
                part_widths.append({k: max(r[k].shape[1] for r in rows) for k in rows[0] if rows[0][k].dim() >= 2})
            else:
                idx = torch.tensor([self.text_rows[texts[p]][1] for p in positions], dtype=torch.long)
                parts.append({k: v[idx] for k, v in self.blocks[block].items()})
                part_widths.append({k: int(w[idx].max()) for k, w in self.widths[block].items()})
            order.extend(positions)
        out = {}
        for key in parts[0]:
            width = max(w[key] for w in part_widths) if key in part_widths[0] else None
            out[key] = torch.cat([_fit_width(p[key], width) for p in parts])
        inverse = torch.empty(len(order), dtype=torch.long)
        inverse[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
        return {k: v[inverse] for k, v in out.items()}

    def flush(self) -> None:
        """Move the texts encoded on demand into a new block, saved as the next shard when the cache has a folder."""
        if not self.pending:
            return
        texts, rows = list(self.pending), list(self.pending.values())
        widths = {k: torch.tensor([r[k].shape[1] for r in rows], dtype=torch.long)
                  for k in rows[0] if rows[0][k].dim() >= 2}
        stacked = _stack(rows)
        if self.directory is not None:
            name = f"{EXTRAS}-{len(self.blocks) - 1:05d}"
            save_tensors_atomic(self.directory / f"{name}.safetensors", stacked)
            write_json_atomic(self.directory / f"{name}.json",  # written last: the shard's commit marker
                              {"texts": texts, "widths": {k: w.tolist() for k, w in widths.items()}})
        self.pending = {}
        self._add_block(stacked, texts, widths)

    def save(self, directory: Path, meta: dict[str, Any]) -> None:
        """Write block 0 (the listed texts) and the images; on-demand texts go to shards (`flush`)."""
        save_tensors_atomic(directory / "images.safetensors", self.images)
        save_tensors_atomic(directory / "texts.safetensors", self.blocks[0])
        write_json_atomic(directory / "texts.json", self.text_list[:self.listed])
        write_json_atomic(directory / "meta.json", meta)

    @classmethod
    def load(cls, directory: Path) -> FeatureCache:
        """Block 0 and every complete `extras-NNNNN` shard, in order (on-demand texts go on to new shards)."""
        cache = cls(load_tensors(directory / "images.safetensors"), load_tensors(directory / "texts.safetensors"),
                    list(read_json(directory / "texts.json", "feature-cache texts")), directory)
        while (directory / f"{EXTRAS}-{len(cache.blocks) - 1:05d}.json").is_file():
            name = directory / f"{EXTRAS}-{len(cache.blocks) - 1:05d}"
            info = read_json(name.with_suffix(".json"), "feature-cache shard")
            rows = load_tensors(name.with_suffix(".safetensors"))
            texts, widths = list(info.get("texts", [])), dict(info.get("widths", {}))
            sizes = {len(texts), *(len(v) for v in rows.values()), *(len(w) for w in widths.values())}
            if (len(sizes) != 1 or set(rows) != set(cache.blocks[0]) or any(t in cache.text_rows for t in texts)
                    or set(widths) != {k for k, v in rows.items() if v.dim() >= 2}):
                raise CirlabError(f"damaged feature-cache shard {name}.json: delete {directory} to rebuild it")
            cache._add_block(rows, texts, {k: torch.tensor(w, dtype=torch.long) for k, w in widths.items()})
            cache.text_list.extend(texts)
        return cache


def _full_widths(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every row at the block's full width along dim 1 (block 0: the listed texts, padded once when cached)."""
    return {k: torch.full((v.shape[0],), v.shape[1], dtype=torch.long) for k, v in rows.items() if v.dim() >= 2}


def _fit_width(x: torch.Tensor, width: int | None) -> torch.Tensor:
    """Cut or zero-pad `x` along dim 1 to `width` (None: leave it)."""
    if width is None or x.shape[1] == width:
        return x
    if x.shape[1] > width:
        return x[:, :width]
    return F.pad(x, (0, 0) * (x.dim() - 2) + (0, width - x.shape[1]))


@torch.no_grad()
def encode_texts_eval(model: CompositionModel, texts: list[str]) -> Features:
    """The model's text features in eval mode without gradients, as `encode_all` computes them."""
    was_training = model.training
    model.eval()
    try:
        return model.encode_text(texts)
    finally:
        model.train(was_training)


def encode_all(model: CompositionModel, dataset: CIRDataset, transform: ImageTransform, texts: Sequence[str],
               batch_size: int = 64, progress: bool = True) -> FeatureCache:
    """Run the frozen encoders once over every image of `dataset` and every text in `texts` (eval mode, fp32)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    text_list = list(dict.fromkeys(texts))
    try:
        images = [_cpu(feats) for _, feats in map_batches(
            range(len(dataset)), lambda rows: model.encode_image(dataset.load_batch(rows, transform).to(device)),
            batch_size, device, progress=progress, desc="cache images")]
        text_rows = [_cpu(feats) for _, feats in map_batches(
            range(len(text_list)), lambda rows: model.encode_text([text_list[r] for r in rows]), batch_size, device,
            progress=progress, desc="cache texts")]
    finally:
        model.train(was_training)
    return FeatureCache(_stack(images), _stack(text_rows), text_list)


def _cpu(feats: Features) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in _flatten(feats).items()}


def build_feature_cache(model: CompositionModel, dataset: CIRDataset, transform: ImageTransform, run_dir: Path,
                        split: str, texts: Sequence[str], progress: bool = True) -> FeatureCache:
    """Load `run_dir/feature_cache/<split>` if it matches this model and data, else encode and save it (a stale
    cache's on-demand shards are removed with it)."""
    check_cacheable(model)
    directory = Path(run_dir) / CACHE_DIR / split
    cfg = model.config
    listed = list(dict.fromkeys(texts))
    key = {"image_encoder": cfg.image_encoder, "text_encoder": cfg.text_encoder, "image_options": cfg.image_options,
           "text_options": cfg.text_options, "image_size": transform.size, "pad": transform.pad,
           "images": len(dataset), "texts": len(listed)}
    if (directory / "meta.json").is_file():
        meta = read_json(directory / "meta.json", "feature-cache meta")
        if ({k: meta.get(k) for k in key} == key
                and read_json(directory / "texts.json", "feature-cache texts") == listed):
            return FeatureCache.load(directory)
    started = time.perf_counter()
    cache = encode_all(model, dataset, transform, listed, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(f"{EXTRAS}-*"):
        stale.unlink()
    cache.save(directory, {**key, "seconds": round(time.perf_counter() - started, 2)})
    cache.directory = directory
    return cache
