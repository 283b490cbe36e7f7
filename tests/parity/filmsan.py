"""Parity runners: filmsan fixtures (filled in by the model-family owner)."""
