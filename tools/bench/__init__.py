"""The benchmarks of tools/benchmark.py: methods.py (method against method, judged by
verdicts.py and written by markdown.py) and one module per speed benchmark. They import one
another package-relative, so they load as `bench` when tools/benchmark.py runs as a script
and as `tools.bench` in the tests."""
