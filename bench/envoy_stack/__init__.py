"""Tooling that launches real Envoy in front of `epp serve` (for `epp envoy up`, tests, demos, benchmarks)."""
