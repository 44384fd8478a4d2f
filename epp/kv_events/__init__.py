"""vLLM KV-cache events: the ZeroMQ wire format (`wire`) and a subscriber that follows it (`subscriber`)."""
