"""A vLLM 0.32-compatible simulated model server."""
