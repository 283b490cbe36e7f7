"""Small building blocks shared by the composition models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cirlab.utils.errors import CirlabError


class BatchNorm1dAnyBatch(nn.BatchNorm1d):
    """BatchNorm1d that also trains on a batch of one (it then normalises with the running statistics
    instead of failing), so that the models are batch-size agnostic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return super().forward(x)


def bn(dim: int) -> nn.Module:
    return BatchNorm1dAnyBatch(dim)


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, dim: tuple[int, ...] | int = (2, 3),
        mask: torch.Tensor | None = None, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling (mean of x^p)^(1/p) over `dim`; `mask` (same shape, broadcastable) drops entries."""
    x = x.clamp_min(eps).pow(p)
    if mask is None:
        return x.mean(dim=dim).pow(1.0 / p)
    m = mask.to(x.dtype)
    return ((x * m).sum(dim=dim) / m.sum(dim=dim).clamp_min(1.0)).clamp_min(eps).pow(1.0 / p)


class GeM(nn.Module):
    """GeM pooling with a learnable exponent p (initialised to 3, as in CRN)."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))

    def forward(self, x: torch.Tensor, dim: tuple[int, ...] | int = (2, 3), mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        return gem(x, self.p.clamp_min(1.0), dim, mask)


def decoder(dim_in: int, dim_out: int) -> nn.Sequential:
    """ComposeAE's reconstruction decoder: BN -> ReLU -> Linear(in -> out) -> ReLU -> Linear(out -> out)."""
    return nn.Sequential(bn(dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out), nn.ReLU(), nn.Linear(dim_out, dim_out))


def identity_or_linear(dim_in: int, dim_out: int) -> nn.Module:
    """Identity when the sizes match, else a Linear map (used where a frozen feature has another size)."""
    return nn.Identity() if dim_in == dim_out else nn.Linear(dim_in, dim_out)


def map_reference_names(module: nn.Module, prefixes: dict[str, str]) -> dict[str, str]:
    """{our state_dict name: the released code's name} for every entry of `module` under one of `prefixes`
    (our prefix -> the release's prefix; "" matches everything). The layers below a prefix keep the release's
    numbering, so only the prefixes differ."""
    names = {}
    for key in module.state_dict():
        for ours, ref in prefixes.items():
            if not ours or key == ours or key.startswith(ours + "."):
                rest = key[len(ours):].lstrip(".")
                names[key] = ".".join(part for part in (ref, rest) if part)
                break
    return names


def load_reference_entries(module: nn.Module, state_dict: dict[str, torch.Tensor], names: dict[str, str],
                           what: str) -> None:
    """Copy released-code entries into `module` through `names` (ours -> the release's); an entry that is
    missing or has another number of values is a CirlabError (`what` names the released model)."""
    own = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    missing = sorted(ref for ref in names.values() if ref not in state_dict)
    if missing:
        raise CirlabError(f"not a {what} state_dict: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for ours, ref in names.items():
        if state_dict[ref].numel() != own[ours].numel():
            raise CirlabError(f"{what} entry {ref}: shape {tuple(state_dict[ref].shape)}, this model has "
                              f"{tuple(own[ours].shape)} for {ours}")
    with torch.no_grad():
        for ours, ref in names.items():
            own[ours].copy_(state_dict[ref].reshape(own[ours].shape))


def grads_by_reference_name(module: nn.Module, names: dict[str, str]) -> dict[str, torch.Tensor]:
    """{the release's parameter name: our parameter's gradient (zeros where none reached it)} through `names`."""
    params = dict(module.named_parameters())
    return {ref: (params[ours].grad if params[ours].grad is not None else torch.zeros_like(params[ours]))
            for ours, ref in names.items() if ours in params}
