"""Run epp behind a real Envoy: render the Envoy config, launch Envoy and `epp serve`, the `epp envoy` CLI."""
