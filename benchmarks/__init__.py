"""Benchmark scripts; each prints one JSON line per figure."""
