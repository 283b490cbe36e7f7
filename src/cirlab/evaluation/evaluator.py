"""Dataset-agnostic evaluation: encode each needed image once, compose queries, score every EvalSet.

The protocol lives in the dataset's `EvalSet`s (labels, exclusions, candidate subsets); nothing here
knows which benchmark it is looking at.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation.recall import first_hit_ranks, recall_from_ranks, subset_first_hit_ranks
from cirlab.models import CompositionModel
from cirlab.training import distributed
from cirlab.training.precision import autocast

ImageTransformFn = Callable[..., torch.Tensor]


def model_device(model: CompositionModel) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def encode_gallery(model: CompositionModel, dataset: CIRDataset, indices: Sequence[int],
                   transform: ImageTransformFn, batch_size: int = 128, progress: bool = True,
                   desc: str = "gallery", precision: str = "fp32") -> torch.Tensor:
    """L2-normalised target embeddings of `indices`, (N, D), float32, encoded in batches under `precision`'s
    autocast (cirlab.training.precision).

    Under torchrun each rank encodes every world_size-th image and the pieces are gathered in order."""
    ctx = distributed.current()
    mine = distributed.shard(indices, ctx)
    model.eval()
    out = []
    bar = tqdm(range(0, len(mine), batch_size), desc=desc, disable=not (progress and ctx.is_main), leave=False)
    for start in bar:
        batch = dataset.load_batch(mine[start:start + batch_size], transform).to(model_device(model))
        with autocast(batch.device, precision):
            target = model.embed_target(batch)
        out.append(F.normalize(target.float(), dim=-1).cpu())
    local = torch.cat(out) if out else torch.empty(0, model.embed_dim)
    return distributed.gather_shards(local, len(indices), ctx)


@torch.no_grad()
def encode_queries(model: CompositionModel, dataset: CIRDataset, images: Sequence[int], texts: Sequence[str],
                   transform: ImageTransformFn, batch_size: int = 128, progress: bool = True,
                   precision: str = "fp32") -> torch.Tensor:
    """L2-normalised composed query embeddings, (Q, D), sharded across torchrun ranks like the gallery."""
    ctx = distributed.current()
    rows = distributed.shard(range(len(images)), ctx)
    model.eval()
    out = []
    bar = tqdm(range(0, len(rows), batch_size), desc="queries", disable=not (progress and ctx.is_main), leave=False)
    for start in bar:
        chunk = rows[start:start + batch_size]
        batch = dataset.load_batch([images[r] for r in chunk], transform).to(model_device(model))
        with autocast(batch.device, precision):
            query = model.compose(batch, [texts[r] for r in chunk])
        out.append(F.normalize(query.float(), dim=-1).cpu())
    local = torch.cat(out) if out else torch.empty(0, model.embed_dim)
    return distributed.gather_shards(local, len(images), ctx)


def score_eval_set(eval_set: EvalSet, query_feats: torch.Tensor, gallery_feats: torch.Tensor) -> dict[str, float]:
    """Recall@K for every label kind (the first is the primary 'recall@K'), plus subset recall if defined.

    Both follow the tie rule of `cirlab.evaluation.recall` (score descending, then gallery position ascending).
    The subset hit is the best-ranked candidate with the query's primary label, and `exclude` applies to subsets
    too (CIRR: one target per query, reference never a candidate, so only exact score ties could differ from the
    earlier list-order rule)."""
    ranks = first_hit_ranks(query_feats, gallery_feats, eval_set.query_labels, eval_set.gallery_labels,
                            eval_set.exclude)
    metrics: dict[str, float] = {}
    for i, (kind, r) in enumerate(ranks.items()):
        prefix = "" if i == 0 else f"{kind}_"
        for k, value in recall_from_ranks(r, eval_set.ks).items():
            metrics[f"{prefix}recall@{k}"] = value
    if eval_set.candidates is not None:
        primary = next(iter(eval_set.query_labels))
        sub = subset_first_hit_ranks(query_feats, gallery_feats, eval_set.candidates, eval_set.query_labels[primary],
                                     eval_set.gallery_labels[primary], eval_set.exclude)
        for k, value in recall_from_ranks(sub, eval_set.subset_ks).items():
            metrics[f"recall_subset@{k}"] = value
    return metrics


def score_eval_sets(dataset: CIRDataset, sets: list[EvalSet],
                    gallery_feats: Callable[[EvalSet], torch.Tensor],
                    query_feats: Callable[[EvalSet], torch.Tensor]) -> dict[str, Any]:
    """Score every EvalSet from its gallery and query vectors; returns headline metrics, per-set metrics, counts
    and the protocol statement. How the vectors are made (images end to end, or cached features) is the caller's."""
    per_set: dict[str, dict[str, float]] = {}
    queries = gallery = 0
    for s in sets:
        per_set[s.name] = score_eval_set(s, query_feats(s), gallery_feats(s))
        queries += s.num_queries
        gallery += len(s.gallery_images)
    return {"metrics": dataset.summarize(per_set), "per_set": per_set, "queries": queries, "gallery": gallery,
            "protocol": "; ".join(dict.fromkeys(s.protocol for s in sets if s.protocol))}


def evaluate_dataset(model: CompositionModel, dataset: CIRDataset, transform: ImageTransformFn,
                     batch_size: int = 128, progress: bool = True, precision: str = "fp32") -> dict[str, Any]:
    """Evaluate on every EvalSet of `dataset`, encoding each gallery image once across all sets."""
    sets = dataset.eval_sets()
    needed = sorted({int(i) for s in sets for i in s.gallery_images})
    feats = encode_gallery(model, dataset, needed, transform, batch_size, progress, precision=precision)
    row = {img: r for r, img in enumerate(needed)}
    return score_eval_sets(
        dataset, sets,
        lambda s: feats[torch.as_tensor([row[int(i)] for i in s.gallery_images], dtype=torch.long)],
        lambda s: encode_queries(model, dataset, s.query_images, s.query_texts, transform, batch_size, progress,
                                 precision))
