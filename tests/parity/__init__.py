"""Parity with the released reference code: the harness and one module of case runners per model family."""
