"""The benchmarks of tools/benchmark.py, one module each."""
