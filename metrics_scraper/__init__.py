"""Scrapes vLLM /metrics into typed snapshots."""
