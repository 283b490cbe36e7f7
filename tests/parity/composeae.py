"""Parity runners: composeae fixtures (filled in by the model-family owner)."""
