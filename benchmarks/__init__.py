"""Benchmark commands: each measures something and writes its figures into docs/ (run as scripts or with -m)."""
