"""Dataset-agnostic evaluation: encode each needed image once, compose queries, score every EvalSet.

The protocol lives in the dataset's `EvalSet`s (labels, exclusions, candidate subsets); nothing here
knows which benchmark it is looking at.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation.recall import first_hit_ranks, recall_from_ranks, subset_first_hit_ranks
from cirlab.inference import Pipeline


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


def evaluate_dataset(pipe: Pipeline, dataset: CIRDataset, progress: bool = True) -> dict[str, Any]:
    """Evaluate on every EvalSet of `dataset`, encoding each gallery image once across all sets (in batches of
    `pipe.batch_size` under `pipe.precision`; under torchrun the ranks share the work)."""
    sets = dataset.eval_sets()
    needed = sorted({int(i) for s in sets for i in s.gallery_images})
    feats = pipe.embed_dataset(dataset, needed, progress)
    row = {img: r for r, img in enumerate(needed)}
    return score_eval_sets(
        dataset, sets,
        lambda s: feats[torch.as_tensor([row[int(i)] for i in s.gallery_images], dtype=torch.long)],
        lambda s: pipe.compose_dataset(dataset, s.query_images, s.query_texts, progress))
