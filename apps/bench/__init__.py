"""Benchmarks: FLOPs, speed, end-to-end scoring, the paper's ablations and focus measurements."""
