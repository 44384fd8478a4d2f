"""Prometheus attached to epp: a local Prometheus process, its config, and the queries of the dashboards."""
