"""Scrapes vLLM /metrics into typed snapshots."""

from metrics_scraper.scraper import ScrapeObserver, Scraper
from metrics_scraper.vllm_mapping import ScrapeError, VllmMetricsParser, parse_vllm_metrics

__all__ = ["ScrapeError", "ScrapeObserver", "Scraper", "VllmMetricsParser", "parse_vllm_metrics"]
