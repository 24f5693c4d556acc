"""Benchmarks: our figures beside the raw limits measured in the same run (./scripts/bench)."""
