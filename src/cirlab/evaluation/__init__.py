"""Evaluation: chunked recall maths and the dataset-agnostic evaluator."""

from cirlab.evaluation.evaluator import evaluate_dataset, score_eval_set, score_eval_sets
from cirlab.evaluation.recall import (
    first_hit_ranks,
    recall_from_ranks,
    sort_by_rule,
    subset_first_hit_ranks,
    subset_ranks,
    topk_chunked,
)
from cirlab.evaluation.run_eval import evaluate, evaluate_run, make_cached_eval_fn, make_eval_fn

__all__ = ["evaluate", "evaluate_dataset", "evaluate_run", "first_hit_ranks", "make_cached_eval_fn", "make_eval_fn",
           "recall_from_ranks", "score_eval_set", "score_eval_sets", "sort_by_rule", "subset_first_hit_ranks",
           "subset_ranks", "topk_chunked"]
