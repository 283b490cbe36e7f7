"""The CIRR test server's submission: top-50 gallery names and top-3 `img_set` names per pair id.

The server takes two JSON files for test1 (whose targets are hidden): `recall` maps every pair id to the
top-50 gallery image names, `recall_subset` to the top-3 names among the members of the query's `img_set`;
both carry `"version": "rc2"` and their `"metric"`. The reference image is never ranked. The server rejects
files over 5 MB, so `check_size` refuses such a text before anything is written. Writing the files is the
caller's (`cirlab submit-cirr`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cirlab.datasets import CIRDataset, EvalSet
from cirlab.evaluation.recall import topk_chunked
from cirlab.inference import Pipeline
from cirlab.utils.errors import CirlabError

VERSION = "rc2"
RECALL_TOP = 50
SUBSET_TOP = 3
MAX_BYTES = 5_000_000  # the CIRR server's 5 MB upload limit (decimal megabytes, the stricter reading)


@dataclass
class CIRRSubmission:
    """Rankings by pair id for the two server metrics, and how many queries were ranked."""

    recall: dict[str, list[str]]
    recall_subset: dict[str, list[str]]
    queries: int

    def texts(self) -> dict[str, str]:
        """The two files' contents by metric name ("recall", "recall_subset"), in the server's format."""
        return {"recall": submission_text("recall", self.recall),
                "recall_subset": submission_text("recall_subset", self.recall_subset)}


def submission_rankings(eval_set: EvalSet, query_feats: torch.Tensor, gallery_feats: torch.Tensor,
                        names: list[str]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Top-50 gallery names and top-3 `img_set` names per pair id (reference excluded from both).

    `names[g]` is the image name of gallery position g; `eval_set.exclude` holds each reference's position
    and `eval_set.candidates` the members of its `img_set` other than the reference.
    """
    if eval_set.query_ids is None or eval_set.candidates is None:
        raise CirlabError(f"eval set {eval_set.name!r} has no pair ids or img_set candidates; "
                          "a CIRR submission needs the CIRR loader")
    _, top = topk_chunked(query_feats, gallery_feats, RECALL_TOP, eval_set.exclude)
    recall: dict[str, list[str]] = {}
    subset: dict[str, list[str]] = {}
    for q, pair_id in enumerate(eval_set.query_ids):
        recall[pair_id] = [names[int(g)] for g in top[q] if int(g) != int(eval_set.exclude[q])]
        cand = np.asarray(eval_set.candidates[q], dtype=np.int64)
        cand = cand[cand != eval_set.exclude[q]]
        scores = (gallery_feats[torch.as_tensor(cand)] @ query_feats[q]).numpy() if len(cand) else np.empty(0)
        order = np.argsort(-scores, kind="stable")[:SUBSET_TOP]
        subset[pair_id] = [names[int(cand[i])] for i in order]
    return recall, subset


def submission_text(metric: str, rankings: dict[str, list[str]]) -> str:
    """The server's format, compact: {"version": "rc2", "metric": ..., "<pairid>": [names], ...}."""
    return json.dumps({"version": VERSION, "metric": metric, **rankings}, separators=(",", ":"))


def check_size(path: str | Path, text: str) -> None:
    """Refuse (CirlabError naming `path`) a submission the server would reject for its size."""
    size = len(text.encode("utf-8"))
    if size > MAX_BYTES:
        raise CirlabError(f"{path}: {size:,} bytes exceeds the CIRR server limit of {MAX_BYTES:,} bytes; "
                          "not written")


@torch.no_grad()
def rank_cirr_submission(pipe: Pipeline, dataset: CIRDataset, progress: bool = True) -> CIRRSubmission:
    """Rank every query of the dataset's (single) eval set for both server metrics."""
    sets = dataset.eval_sets()
    if len(sets) != 1:
        raise CirlabError(f"a CIRR submission needs one eval set, {dataset.name} gives {len(sets)}")
    s = sets[0]
    gallery = pipe.embed_dataset(dataset, s.gallery_images, progress)
    queries = pipe.compose_dataset(dataset, s.query_images, s.query_texts, progress)
    names = [dataset.image_name(i) for i in s.gallery_images]
    recall, subset = submission_rankings(s, queries, gallery, names)
    return CIRRSubmission(recall, subset, s.num_queries)
