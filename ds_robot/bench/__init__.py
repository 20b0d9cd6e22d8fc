"""Benchmarks: each prints a table and can write the JSON of DESIGN §8."""
