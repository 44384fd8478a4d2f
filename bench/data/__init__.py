"""Small generated data sets for the benchmarks (no downloads)."""
