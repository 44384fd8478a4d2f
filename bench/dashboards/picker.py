"""The picker dashboard: decisions, predicted vs actual prefix cache hits, per-pod load, and why a pod gets no
traffic (health state, ejections, stale metrics, saturation).

Picker metrics use the llm-d router's names (llm_d_epp_*, docs/operations.md); the actual prefix cache hit
rate is the pods' own vllm:prefix_cache_hits / vllm:prefix_cache_queries.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from bench.dashboards.common import RATE, base, label_variable, row, series, single

POOL = '{name=~"$pool"}'
MODEL = '{model_name=~"$model_name"}'


def _p(q: float, metric: str, sel: str = "", by: str = "") -> str:
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{sel}[{RATE}])))"


def _requests(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Requests"))
        .with_panel(
            series(
                "Requests by model",
                "Requests the picker routed (or refused) per second.",
                [(f"sum by (model_name) (rate(llm_d_epp_request_total{MODEL}[{RATE}]))", "{{model_name}}")],
                unit="reqps",
            )
        )
        .with_panel(
            series(
                "Errors by status",
                "Requests that ended in an error status per second (499: the client left first).",
                [
                    (
                        f"sum by (error_code) (rate(llm_d_epp_request_error_total{MODEL}[{RATE}]))",
                        "{{error_code}}",
                    )
                ],
                unit="reqps",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Time to first token",
                "Arrival at the picker to the first content chunk, by model (p50, p90).",
                [
                    (_p(0.5, "llm_d_epp_request_ttft_seconds", MODEL, "model_name"), "p50 {{model_name}}"),
                    (_p(0.9, "llm_d_epp_request_ttft_seconds", MODEL, "model_name"), "p90 {{model_name}}"),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Request duration",
                "Arrival to the last byte of the answer, by model (p50, p90).",
                [
                    (
                        _p(0.5, "llm_d_epp_request_duration_seconds", MODEL, "model_name"),
                        "p50 {{model_name}}",
                    ),
                    (
                        _p(0.9, "llm_d_epp_request_duration_seconds", MODEL, "model_name"),
                        "p90 {{model_name}}",
                    ),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Tokens per second",
                "Prompt, completion and cached prompt tokens from the answers' usage (gateway plane).",
                [
                    (f"sum(rate(llm_d_epp_request_input_tokens_sum{MODEL}[{RATE}]))", "input"),
                    (f"sum(rate(llm_d_epp_request_output_tokens_sum{MODEL}[{RATE}]))", "output"),
                    (f"sum(rate(llm_d_epp_request_cached_tokens_sum{MODEL}[{RATE}]))", "cached"),
                ],
            )
        )
        .with_panel(
            series(
                "Running requests",
                "Requests routed and not yet over, by model.",
                [(f"sum by (model_name) (llm_d_epp_request_running{MODEL})", "{{model_name}}")],
            )
        )
    )


def _decisions(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Decisions"))
        .with_panel(
            series(
                "Decisions by result",
                "Scheduling decisions per second by strategy and result (ok, shed, no_endpoints, ...).",
                [
                    (
                        f"sum by (strategy, result) (rate(epp_decisions_total[{RATE}]))",
                        "{{strategy}} {{result}}",
                    )
                ],
                unit="ops",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Picks per pod",
                "Successful scheduling attempts per second, by the pod picked.",
                [
                    (
                        "sum by (endpoint_name) "
                        f'(rate(llm_d_epp_scheduler_attempts_total{{status="success"}}[{RATE}]))',
                        "{{endpoint_name}}",
                    ),
                ],
                unit="ops",
                stack=True,
            )
        )
        .with_panel(
            series(
                "Scheduling time",
                "Time of one scheduling decision (p50, p99).",
                [
                    (_p(0.5, "llm_d_epp_scheduler_e2e_duration_seconds"), "p50"),
                    (_p(0.99, "llm_d_epp_scheduler_e2e_duration_seconds"), "p99"),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Plugin time (p99)",
                "Time of one filter, scorer or picker call, per plugin.",
                [
                    (
                        _p(0.99, "llm_d_epp_plugin_duration_seconds", by="extension_point, plugin_name"),
                        "{{extension_point}} {{plugin_name}}",
                    )
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Picker overhead",
                "Arrival to routed (parse, admission, scheduling), and the picker's time on responses (p99).",
                [
                    (_p(0.99, "llm_d_epp_request_processing_duration_seconds"), "request p99"),
                    (_p(0.99, "llm_d_epp_response_processing_duration_seconds"), "response p99"),
                ],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Retries and shed requests",
                "Requests scheduled again on another pod (by failure), and requests shed under saturation.",
                [
                    (f"sum by (reason) (rate(epp_retries_total[{RATE}]))", "retry {{reason}}"),
                    (f"sum(rate(epp_shed_requests_total[{RATE}]))", "shed"),
                ],
                unit="reqps",
            )
        )
    )


def _prefix(d: dashboard.Dashboard) -> dashboard.Dashboard:
    predicted = (
        f"sum(rate(llm_d_epp_prefix_indexer_hit_ratio_sum[{RATE}]))"
        f" / sum(rate(llm_d_epp_prefix_indexer_hit_ratio_count[{RATE}]))"
    )
    actual = (
        f"sum(rate(vllm:prefix_cache_hits_total[{RATE}]))"
        f" / sum(rate(vllm:prefix_cache_queries_total[{RATE}]))"
    )
    return (
        d.with_row(row("Prefix affinity"))
        .with_panel(
            series(
                "Prefix cache hit ratio: predicted vs actual",
                "Predicted: the share of the prompt's prefix blocks the picker expected on the picked pod "
                "(mean). Actual: the share of prompt tokens the pods found in their prefix caches.",
                [(predicted, "predicted (picker)"), (actual, "actual (pods)")],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Actual prefix cache hit rate per pod",
                "Each pod's own hits / queries; a pod far below the others gets the wrong conversations.",
                [
                    (
                        f"sum by (instance) (rate(vllm:prefix_cache_hits_total[{RATE}]))"
                        f" / sum by (instance) (rate(vllm:prefix_cache_queries_total[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Predicted hit ratio distribution",
                "Quantiles of the predicted prefix match of each decision.",
                [
                    (_p(0.5, "llm_d_epp_prefix_indexer_hit_ratio"), "p50"),
                    (_p(0.9, "llm_d_epp_prefix_indexer_hit_ratio"), "p90"),
                ],
                unit="percentunit",
            )
        )
    )


def _load(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Load per pod"))
        .with_panel(
            series(
                "Queue per pod",
                "Waiting requests of each pod at the picker's last scrape.",
                [
                    (
                        f"max by (model_server_endpoint) (llm_d_epp_per_endpoint_queue_size{POOL})",
                        "{{model_server_endpoint}}",
                    )
                ],
            )
        )
        .with_panel(
            series(
                "In flight per pod",
                "Requests epp sent to each pod and has not seen finish.",
                [("max by (endpoint) (epp_endpoint_in_flight_requests)", "{{endpoint}}")],
            )
        )
        .with_panel(
            series(
                "Running per pod",
                "Running requests of each pod at the last scrape.",
                [("max by (endpoint) (epp_endpoint_running_requests)", "{{endpoint}}")],
            )
        )
        .with_panel(
            series(
                "KV cache use per pod",
                "Each pod's KV cache use at the last scrape.",
                [("max by (endpoint) (epp_endpoint_kv_cache_usage)", "{{endpoint}}")],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Pool balance",
                "Pool means of KV cache use, queue and running requests, with their standard deviations "
                "(a large deviation: the load is uneven).",
                [
                    (f"max by (name) (llm_d_epp_average_kv_cache_utilization{POOL})", "KV mean {{name}}"),
                    (f"max by (name) (llm_d_epp_std_dev_kv_cache_utilization{POOL})", "KV std dev {{name}}"),
                    (f"max by (name) (llm_d_epp_average_queue_size{POOL})", "queue mean {{name}}"),
                    (f"max by (name) (llm_d_epp_std_dev_queue_size{POOL})", "queue std dev {{name}}"),
                    (f"max by (name) (llm_d_epp_average_running_requests{POOL})", "running mean {{name}}"),
                    (f"max by (name) (llm_d_epp_std_dev_running_requests{POOL})", "running std dev {{name}}"),
                ],
                width=24,
            )
        )
    )


def _no_traffic(d: dashboard.Dashboard) -> dashboard.Dashboard:
    return (
        d.with_row(row("Why a pod gets no traffic"))
        .with_panel(
            series(
                "Health state",
                "The state of each pod: healthy and slow are routable; the others (unready, ejected, stale, "
                "down, ...) say why a pod gets no traffic.",
                [("max by (endpoint, state) (epp_endpoint_state) == 1", "{{endpoint}} {{state}}")],
            )
        )
        .with_panel(
            series(
                "Schedulable",
                "1 while the pod can be picked.",
                [("max by (endpoint) (epp_endpoint_schedulable)", "{{endpoint}}")],
            )
        )
        .with_panel(
            series(
                "Attempts by outcome",
                "Attempts per second on each pod by how they ended (ok, connect_failed, http_5xx, ...).",
                [
                    (
                        f"sum by (endpoint, outcome) (rate(epp_endpoint_attempts_total[{RATE}]))",
                        "{{endpoint}} {{outcome}}",
                    )
                ],
                unit="ops",
            )
        )
        .with_panel(
            series(
                "Ejections",
                "Outlier-detection ejections per pod and cause, in the window.",
                [
                    (
                        f"sum by (endpoint, reason) (increase(epp_endpoint_ejections_total[{RATE}]))",
                        "{{endpoint}} {{reason}}",
                    )
                ],
            )
        )
        .with_panel(
            series(
                "Metrics age",
                "Seconds since each pod's last good scrape by epp (stale metrics take the pod out).",
                [("max by (endpoint) (epp_endpoint_metrics_staleness_seconds)", "{{endpoint}}")],
                unit="s",
            )
        )
        .with_panel(
            series(
                "Scrape errors and restarts",
                "epp's failed metrics scrapes per second, and pod restarts seen.",
                [
                    (f"sum by (endpoint) (rate(epp_scrape_errors_total[{RATE}]))", "errors {{endpoint}}"),
                    ("max by (endpoint) (epp_endpoint_restarts)", "restarts {{endpoint}}"),
                ],
            )
        )
    )


def build() -> dashboard.Dashboard:
    d = base(
        "epp-picker",
        "epp / picker",
        "epp's scheduling decisions, prefix affinity and the pods it routes to (epp serve and epp gateway).",
        ["picker", "llm-d"],
    )
    d = d.with_variable(label_variable("pool", "Pool", "llm_d_epp_ready_endpoints", "name"))
    d = d.with_variable(label_variable("model_name", "Model", "llm_d_epp_request_total", "model_name"))
    d = (
        d.with_row(row("Overview"))
        .with_panel(
            single(
                "Ready endpoints",
                "Pods the picker can route to now.",
                f"sum(llm_d_epp_ready_endpoints{POOL})",
            )
        )
        .with_panel(single("Pods in pool", "Pods in the pool, ready or not.", "max(epp_endpoints)"))
        .with_panel(
            single(
                "Requests/s",
                "Requests the picker routed.",
                f"sum(rate(llm_d_epp_request_total{MODEL}[{RATE}]))",
                unit="reqps",
            )
        )
        .with_panel(
            single(
                "Error ratio",
                "Share of requests that ended in an error status.",
                f"(sum(rate(llm_d_epp_request_error_total{MODEL}[{RATE}])) or vector(0))"
                f" / sum(rate(llm_d_epp_request_total{MODEL}[{RATE}]))",
                unit="percentunit",
            )
        )
    )
    return _no_traffic(_load(_prefix(_decisions(_requests(d)))))
