"""Registry of base losses: a loss maps (query (B, D), target (B, D)) to a scalar."""

from cirlab.utils.registry import Registry

LOSSES: Registry = Registry("loss")
