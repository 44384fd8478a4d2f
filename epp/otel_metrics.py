"""Gateway metrics after the OpenTelemetry GenAI semantic conventions (semconv v1.41), as Prometheus names.

`gen_ai.client.token.usage`, `gen_ai.server.request.duration`, `gen_ai.server.time_to_first_token` and
`gen_ai.server.time_per_output_token`, with the spec's explicit bucket boundaries and attributes (dots become
underscores; a unit of `s` adds `_seconds`). Request and response model names come from clients and upstream
answers: each is a CappedLabel.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram

from epp.labelled_metrics import DEFAULT_LABEL_CAP, CappedLabel, LabelledSeries

TOKEN_USAGE_BUCKETS = (
    1,
    4,
    16,
    64,
    256,
    1024,
    4096,
    16384,
    65536,
    262144,
    1048576,
    4194304,
    16777216,
    67108864,
)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

ATTRIBUTES = (
    "gen_ai_operation_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "server_address",
    "server_port",
)
POOL_PROVIDER = "epp"  # gen_ai.provider.name of the self-hosted pool (a provider's configured type otherwise)
# gen_ai.operation.name by OpenAI-style path (the spec's well-known values)
OPERATION_OF_PATH = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "text_completion",
    "/v1/embeddings": "embeddings",
}


def operation_of(path: str) -> str:
    return OPERATION_OF_PATH.get(path, "chat" if path.endswith("/chat/completions") else "text_completion")


@dataclass(slots=True)
class GenAIFacts:
    """One finished request, as the gateway saw it (None: not known)."""

    operation: str
    provider: str
    request_model: str
    response_model: str
    server_address: str
    server_port: str
    duration_s: float
    error_type: str = ""  # "" on success, else the status code or the failure class
    ttft_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class GenAIMetrics:
    def __init__(self, registry: CollectorRegistry, label_cap: int = DEFAULT_LABEL_CAP) -> None:
        r = registry
        self._request_model = CappedLabel(label_cap)
        self._response_model = CappedLabel(label_cap)
        self.token_usage = LabelledSeries(
            Histogram(
                "gen_ai_client_token_usage",
                "Number of input and output tokens used.",
                [*ATTRIBUTES, "gen_ai_token_type"],
                buckets=TOKEN_USAGE_BUCKETS,
                registry=r,
            )
        )
        self.duration = LabelledSeries(
            Histogram(
                "gen_ai_server_request_duration_seconds",
                "Generative AI server request duration such as time-to-last byte or last output token.",
                [*ATTRIBUTES, "error_type"],
                buckets=DURATION_BUCKETS,
                registry=r,
            )
        )
        self.ttft = LabelledSeries(
            Histogram(
                "gen_ai_server_time_to_first_token_seconds",
                "Time to generate first token for successful responses.",
                ATTRIBUTES,
                buckets=TTFT_BUCKETS,
                registry=r,
            )
        )
        self.tpot = LabelledSeries(
            Histogram(
                "gen_ai_server_time_per_output_token_seconds",
                "Time per output token generated after the first token for successful responses.",
                ATTRIBUTES,
                buckets=TPOT_BUCKETS,
                registry=r,
            )
        )

    def reserve_models(self, names: Iterable[str]) -> None:
        """Models the config names: they keep their own label whatever clients send."""
        names = list(names)
        self._request_model.reserve(names)
        self._response_model.reserve(names)

    def record(self, facts: GenAIFacts) -> None:
        attrs = (
            facts.operation,
            facts.provider,
            self._request_model(facts.request_model),
            self._response_model(facts.response_model) if facts.response_model else "",
            facts.server_address,
            facts.server_port,
        )
        self.duration(*attrs, facts.error_type).observe(facts.duration_s)
        if facts.input_tokens is not None:
            self.token_usage(*attrs, "input").observe(facts.input_tokens)
        if facts.output_tokens is not None:
            self.token_usage(*attrs, "output").observe(facts.output_tokens)
        if facts.error_type or facts.ttft_s is None:
            return
        self.ttft(*attrs).observe(facts.ttft_s)
        out = facts.output_tokens
        if out is not None and out > 1:
            self.tpot(*attrs).observe(max(0.0, facts.duration_s - facts.ttft_s) / (out - 1))
