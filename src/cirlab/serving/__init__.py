"""Serving: the FastAPI app (JSON API + web page) over one gallery index."""

from cirlab.serving.app import Limits, create_app
from cirlab.serving.demo import demo_index

__all__ = ["Limits", "create_app", "demo_index"]
