"""Parity runners: crn fixtures (filled in by the model-family owner)."""
