"""Encode each distinct image of a training batch once (`TrainConfig.distinct_images`, opt-in).

Why: google/tirg's paired sampling on CSS and MIT-States gives every source image twice in a row (two edits of
one reference), so a ResNet step encodes about 48 distinct images as 64. When every distinct image of a batch
occurs equally often, encoding each once and repeating the features is the same function of the weights:
batch-norm's batch mean and (biased) variance over k copies of each image equal those over one copy, and the
gradient of the repeated features is the sum over the copies. Two things differ and are handled here:

* batch-norm's running variance is updated with the unbiased variance, n / (n - 1) of the biased one, where n
  counts every copy; the update is rescaled to the full batch's n after the forward pass;
* rounding: sums run over fewer, larger terms, so losses and gradients agree to float rounding (about 1e-6),
  not bit for bit. That is why this is an option and the faithful recipes do not use it.

A batch whose images repeat unevenly (a source with no second edit), a model in eval mode and an encoder with
dropout (each copy would draw its own mask) are encoded as they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def supports_distinct(encoder: nn.Module) -> bool:
    """False when encoding one copy is not the same function: dropout, or batch-norm without a momentum."""
    for module in encoder.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return False
        if _is_norm(module) and module.track_running_stats and module.momentum is None:
            return False  # a cumulative average: the rescaling below assumes the exponential update
    return True


def repeat_features(feats: Any, index: torch.Tensor) -> Any:
    """Rows `index` of a feature tensor, or of every tensor in a (nested) dict of them."""
    if isinstance(feats, dict):
        return {k: repeat_features(v, index) for k, v in feats.items()}
    return feats.index_select(0, index)


def encode_distinct(encode: Any, encoder: nn.Module, images: torch.Tensor) -> Any:
    """`encode(images)`, computed on each distinct image once when every one occurs equally often."""
    if not encoder.training or len(images) < 2:
        return encode(images)
    flat = images.reshape(len(images), -1)
    # group rows by a weighted sum of their values (torch.unique over whole rows is slow on CUDA), then check that
    # every row equals its group's representative: a collision of two different images falls back to all rows
    weights = torch.linspace(1.0, 2.0, flat.shape[1], device=flat.device, dtype=torch.float64)
    _, inverse, counts = torch.unique(flat.double() @ weights, return_inverse=True, return_counts=True)
    copies = int(counts[0])
    if copies == 1 or bool((counts != copies).any()):
        return encode(images)
    first = torch.empty(len(counts), dtype=torch.long, device=flat.device)
    first.scatter_(0, inverse, torch.arange(len(flat), device=flat.device))
    distinct = flat.index_select(0, first)
    if not torch.equal(distinct.index_select(0, inverse), flat):
        return encode(images)
    norms = [m for m in encoder.modules() if _is_norm(m) and m.training and m.track_running_stats]
    before = [m.running_var.detach().clone() for m in norms]
    sizes: dict[nn.Module, int] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, args[0].numel() // args[0].shape[1]))
             for m in norms]
    try:
        feats = encode(distinct.view(len(distinct), *images.shape[1:]))
    finally:
        for hook in hooks:
            hook.remove()
    with torch.no_grad():
        for module, old in zip(norms, before, strict=True):
            n = sizes.get(module)
            if not n or n < 2:
                continue
            kept = old * (1.0 - module.momentum)
            # (new - kept) = momentum * biased * n/(n-1); the full batch has k*n values: k*n/(k*n-1)
            factor = (copies * n / (copies * n - 1)) / (n / (n - 1))
            # through .data: autograd saved running_var for batch-norm's backward (which does not read it in
            # training mode); an ordinary in-place write would fail its version check
            module.running_var.data.copy_(kept + (module.running_var - kept) * factor)
    return repeat_features(feats, inverse)
