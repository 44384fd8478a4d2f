"""The gateway dashboard: traffic by route and provider, errors, TTFT, tokens, fallbacks, response cache.

Per-request series are `epp gateway`'s own (epp_gateway_*); latency and token histograms follow the
OpenTelemetry GenAI conventions (gen_ai_*, docs/operations.md); the cache is epp_cache_*.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from bench.dashboards.common import RATE, base, label_variable, row, series, single

ROUTE = '{route=~"$route"}'
GENAI = '{gen_ai_provider_name=~"$provider"}'


def _p(q: float, metric: str, by: str) -> str:
    return f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{GENAI}[{RATE}])))"


def _traffic(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Traffic"))
        .with_panel(
            series(
                "Requests by route",
                "Requests the gateway answered per second, by route (the path).",
                [(f"sum by (route) (rate(epp_gateway_requests_total{ROUTE}[{RATE}]))", "{{route}}")],
                unit="reqps",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Requests by status and result",
                "Answers per second by HTTP status and result (ok, an error class, a cache hit, ...).",
                [
                    (
                        f"sum by (status, result) (rate(epp_gateway_requests_total{ROUTE}[{RATE}]))",
                        "{{status}} {{result}}",
                    )
                ],
                unit="reqps",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Provider requests by route and provider",
                "LLMRoute requests per second, by route and the provider that served (or last failed).",
                [
                    (
                        "sum by (route, provider) "
                        f"(rate(epp_gateway_provider_requests_total{ROUTE}[{RATE}]))",
                        "{{route}} → {{provider}}",
                    )
                ],
                unit="reqps",
                stack=True,
            )
        )
        .with_panel(
            series(
                "In flight",
                "Requests the gateway is handling now.",
                [("sum(epp_gateway_in_flight_requests)", "in flight")],
            )
        )
    )


def _errors(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Errors and fallbacks"))
        .with_panel(
            series(
                "Error ratio by route",
                "Share of answers with a 4xx or 5xx status, per route.",
                [
                    (
                        "(sum by (route) (rate(epp_gateway_requests_total"
                        f'{{route=~"$route", status=~"[45].."}}[{RATE}]))'
                        f" or sum by (route) (rate(epp_gateway_requests_total{ROUTE}[{RATE}])) * 0)"
                        f" / sum by (route) (rate(epp_gateway_requests_total{ROUTE}[{RATE}]))",
                        "{{route}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Provider errors",
                "Failed provider attempts per second by provider and class (http_5xx, connect_failed, ...).",
                [
                    (
                        f"sum by (provider, error) (rate(epp_gateway_provider_errors_total{ROUTE}[{RATE}]))",
                        "{{provider}} {{error}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Fallbacks",
                "Requests sent to a fallback provider per second (reason: ejected target, or retry).",
                [
                    (
                        "sum by (from_provider, to_provider, reason) "
                        f"(rate(epp_gateway_provider_fallbacks_total{ROUTE}[{RATE}]))",
                        "{{from_provider}} → {{to_provider}} ({{reason}})",
                    )
                ],
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Provider ejections",
                "Ejections in the window, and 1 while a provider host is ejected.",
                [
                    (
                        f"sum by (provider, reason) (increase(epp_gateway_provider_ejections_total[{RATE}]))",
                        "ejections {{provider}} {{reason}}",
                    ),
                    ("max by (provider) (epp_gateway_provider_ejected)", "ejected {{provider}}"),
                ],
            )
        )
    )


def _latency(d: dashboard.Dashboard) -> dashboard.Dashboard:
    ttft = "gen_ai_server_time_to_first_token_seconds"
    duration = "gen_ai_server_request_duration_seconds"
    return (
        d.with_row(row("Latency and tokens (OpenTelemetry GenAI)"))
        .with_panel(
            series(
                "Time to first token",
                "Successful answers: arrival to the first content chunk, by provider and model (p50, p90).",
                [
                    (
                        _p(0.5, ttft, "gen_ai_provider_name, gen_ai_request_model"),
                        "p50 {{gen_ai_request_model}}",
                    ),
                    (
                        _p(0.9, ttft, "gen_ai_provider_name, gen_ai_request_model"),
                        "p90 {{gen_ai_request_model}}",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Request duration",
                "Arrival to the last byte, by the host that served (p90).",
                [(_p(0.9, duration, "server_address"), "p90 {{server_address}}")],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Time per output token",
                "Successful answers: (duration − TTFT) / (output tokens − 1), p50 and p90.",
                [
                    (
                        _p(0.5, "gen_ai_server_time_per_output_token_seconds", "gen_ai_request_model"),
                        "p50 {{gen_ai_request_model}}",
                    ),
                    (
                        _p(0.9, "gen_ai_server_time_per_output_token_seconds", "gen_ai_request_model"),
                        "p90 {{gen_ai_request_model}}",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Failed requests by error type",
                "Requests per second that ended with an error, by error_type (status code or failure class).",
                [
                    (
                        f'sum by (error_type) (rate({duration}_count{{gen_ai_provider_name=~"$provider", '
                        f'error_type!=""}}[{RATE}]))',
                        "{{error_type}}",
                    )
                ],
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Tokens per second",
                "Input and output tokens from the answers' usage, by model.",
                [
                    (
                        "sum by (gen_ai_token_type, gen_ai_request_model) "
                        f"(rate(gen_ai_client_token_usage_sum{GENAI}[{RATE}]))",
                        "{{gen_ai_token_type}} {{gen_ai_request_model}}",
                    )
                ],
                width=24,
            )
        )
    )


def _cache(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Response cache"))
        .with_panel(
            single(
                "Hit ratio",
                "Cache hits over cacheable requests (bypasses left out).",
                f'sum(rate(epp_cache_requests_total{{status=~"hit.*"}}[{RATE}]))'
                f' / sum(rate(epp_cache_requests_total{{status!="bypass"}}[{RATE}]))',
                unit="percentunit",
            )
        )
        .with_panel(
            single(
                "Model time saved",
                "Upstream seconds the hits saved per second.",
                f"sum(rate(epp_cache_time_saved_seconds_total[{RATE}]))",
                unit="s",
            )
        )
        .with_panel(
            single(
                "Bytes stored",
                "Bytes held in process by the cache tiers.",
                "sum(epp_cache_stored_bytes)",
                unit="bytes",
            )
        )
        .with_panel(
            single(
                "Cache errors/s",
                "Failed cache operations (the request went on uncached).",
                f"sum(rate(epp_cache_errors_total[{RATE}])) or vector(0)",
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Cache requests by result",
                "Cacheable-path requests per second: hit-exact, hit-semantic, miss, bypass.",
                [(f"sum by (status) (rate(epp_cache_requests_total[{RATE}]))", "{{status}}")],
                unit="reqps",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Lookups by tier",
                "Lookups per second by tier and result (error: the backend failed).",
                [
                    (
                        f"sum by (tier, result) (rate(epp_cache_lookups_total[{RATE}]))",
                        "{{tier}} {{result}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Lookup time (p99)",
                "Time of one lookup per tier.",
                [
                    (
                        "histogram_quantile(0.99, sum by (tier, le) "
                        f"(rate(epp_cache_lookup_duration_seconds_bucket[{RATE}])))",
                        "{{tier}}",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Errors and bypasses",
                "Failed cache operations, backend (Redis) errors by tier, and bypasses by reason.",
                [
                    (f"sum by (operation) (rate(epp_cache_errors_total[{RATE}]))", "error {{operation}}"),
                    (
                        f"sum by (tier, operation) (rate(epp_cache_backend_errors_total[{RATE}]))",
                        "backend {{tier}} {{operation}}",
                    ),
                    (f"sum by (reason) (rate(epp_cache_bypasses_total[{RATE}]))", "bypass {{reason}}"),
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Stores",
                "Answers stored or skipped (with the reason) per second.",
                [
                    (
                        f"sum by (result, reason) (rate(epp_cache_stores_total[{RATE}]))",
                        "{{result}} {{reason}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Semantic similarity",
                "Median best cosine similarity of semantic lookups.",
                [
                    (
                        f"histogram_quantile(0.5, sum by (le) (rate(epp_cache_similarity_bucket[{RATE}])))",
                        "p50",
                    )
                ],
            )
        )
    )


def build() -> dashboard.Dashboard:
    d = base(
        "epp-gateway",
        "epp / gateway",
        "epp gateway's traffic: routes, providers, errors, fallbacks, GenAI latency and tokens, the cache.",
        ["gateway", "genai"],
    )
    d = d.with_variable(label_variable("route", "Route", "epp_gateway_requests_total", "route"))
    d = d.with_variable(
        label_variable(
            "provider",
            "GenAI provider",
            "gen_ai_server_request_duration_seconds_count",
            "gen_ai_provider_name",
        )
    )
    return _cache(_latency(_errors(_traffic(d))))
