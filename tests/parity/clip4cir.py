"""Parity runners: clip4cir fixtures (filled in by the model-family owner)."""
