"""Passive health checking of upstream hosts (Envoy-style outlier detection)."""
