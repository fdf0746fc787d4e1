"""Benchmarks and the terminal fleet load generator (never imported by the daemon)."""
