"""Multi-round QA benchmark client, compatible with vLLM production-stack's multi-round-qa.py."""

from bench.multi_round_qa.client import RequestRecord
from bench.multi_round_qa.config import BenchConfig
from bench.multi_round_qa.runner import BenchResult, run_benchmark
from bench.multi_round_qa.summary import Summary, format_summary

__all__ = ["BenchConfig", "BenchResult", "RequestRecord", "Summary", "format_summary", "run_benchmark"]
