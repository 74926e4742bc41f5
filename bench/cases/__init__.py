"""Benchmark cases: whitebox (a), training (b), checkpoints (c); each has ``run(sizes, peaks, ...)``."""
