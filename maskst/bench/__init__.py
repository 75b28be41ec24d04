"""Benchmarks against the PyTorch reference and the profiler."""
