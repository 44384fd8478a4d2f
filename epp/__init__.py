"""epp: an endpoint picker and gateway that routes LLM requests across vLLM pods."""

__version__ = "0.1.0"
