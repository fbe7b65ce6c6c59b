"""Benchmarks of mailgate; `python -m bench --help` runs the harness (bench/harness.py)."""
