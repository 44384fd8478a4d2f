"""Grafana dashboards for epp, built with grafana-foundation-sdk's typed builders (deploy/grafana/*.json)."""
