"""Shared plumbing every layer may import: errors, registries, atomic file writes."""
