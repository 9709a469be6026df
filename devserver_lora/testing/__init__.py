"""Helpers for tests and benchmarks that ship with the package (tiny models, no network)."""
