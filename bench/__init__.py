"""Ratio benchmarks against bare loops measured in the same run (not timed tests)."""
