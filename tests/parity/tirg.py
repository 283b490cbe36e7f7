"""Parity runners: tirg fixtures (filled in by the model-family owner)."""
