"""`--device` for every command that runs a model (eval, index, query, serve, interactive-eval, demo, submit-cirr)."""

from __future__ import annotations

import argparse


def add_device_argument(p: argparse.ArgumentParser, default: str = "cpu") -> None:
    p.add_argument("--device", default=default,
                   help=f"where the model runs: cpu, cuda, cuda:N or auto (CUDA when available); default {default}")
