"""Benchmarks: each prints a table and can write the JSON of docs/architecture.md (benchmark output)."""
