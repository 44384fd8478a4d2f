"""Benchmarks, the vLLM simulator and workload generators."""
