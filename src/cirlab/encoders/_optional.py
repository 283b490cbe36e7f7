"""Lazy imports of optional packages, turned into one-line CirlabErrors that say which extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from cirlab.utils.errors import CirlabError


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module` or raise a CirlabError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CirlabError(f"{purpose} needs the Python package '{module}'; install it with "
                          f"pip install 'cirlab[{extra}]'") from None


#: Help text of the `project` option of pretrained encoders (see `projection`).
PROJECT_HELP = ("add a Linear(native -> out_dim) where the sizes differ; false keeps the trunk's own features "
                "(what a frozen, cached encoder should give the model)")


def projection(native_dim: int, out_dim: int, project: bool) -> tuple[int, object]:
    """(output size, projection module) for a pretrained trunk: Linear(native -> out_dim), or none.

    `project` is the encoder option: true (default) adds the linear projection when the sizes differ,
    false keeps the trunk's own features (what a frozen, cached encoder should give the model)."""
    from torch import nn

    if not project or out_dim <= 0 or out_dim == native_dim:
        return native_dim, nn.Identity()
    return out_dim, nn.Linear(native_dim, out_dim)
