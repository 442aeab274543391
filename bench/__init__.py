"""Benchmarks that print figures (`python -m bench.pipeline`, i.e. `make bench`). They assert no speed."""
