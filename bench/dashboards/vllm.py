"""The vLLM pods dashboard: load, KV cache, prefix cache hits, latency and tokens of each model server pod.

Queries use the metric names of vLLM 0.32 (tests/fixtures/vllm/), which bench/sim serves too; `instance`
is the pod's scrape address (with the Kubernetes scrape config, `pod` is its name as well).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from bench.dashboards.common import RATE, base, label_variable, row, series, single

SEL = '{model_name=~"$model_name", instance=~"$instance"}'


def _quantiles(metric: str, by: str) -> list[tuple[str, str]]:
    return [
        (
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket{SEL}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.9, 0.99)
    ]


def build() -> dashboard.Dashboard:
    d = base(
        "epp-vllm-pods",
        "epp / vLLM pods",
        "The model server pods behind epp, from their own /metrics (vLLM names).",
        ["vllm"],
    )
    d = d.with_variable(label_variable("model_name", "Model", "vllm:num_requests_running", "model_name"))
    d = d.with_variable(
        label_variable("instance", "Pod", 'vllm:num_requests_running{model_name=~"$model_name"}', "instance")
    )
    d = (
        d.with_row(row("Fleet"))
        .with_panel(single("Pods", "vLLM pods reporting metrics.", f"count(vllm:num_requests_running{SEL})"))
        .with_panel(
            single("Running", "Requests in the pods' batches.", f"sum(vllm:num_requests_running{SEL})")
        )
        .with_panel(single("Waiting", "Requests queued in the pods.", f"sum(vllm:num_requests_waiting{SEL})"))
        .with_panel(
            single(
                "KV cache use (mean)",
                "Mean KV cache use over the pods.",
                f"avg(vllm:kv_cache_usage_perc{SEL})",
                unit="percentunit",
            )
        )
        .with_row(row("Load per pod"))
        .with_panel(
            series(
                "Running requests",
                "Requests in each pod's batch.",
                [(f"sum by (instance) (vllm:num_requests_running{SEL})", "{{instance}}")],
            )
        )
        .with_panel(
            series(
                "Waiting requests",
                "Requests queued on each pod (a pod that queues while others do not is picked too often).",
                [(f"sum by (instance) (vllm:num_requests_waiting{SEL})", "{{instance}}")],
            )
        )
        .with_panel(
            series(
                "KV cache use",
                "Fraction of each pod's KV cache blocks in use.",
                [(f"max by (instance) (vllm:kv_cache_usage_perc{SEL})", "{{instance}}")],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Preemptions",
                "Requests preempted per second (KV cache exhausted).",
                [(f"sum by (instance) (rate(vllm:num_preemptions_total{SEL}[{RATE}]))", "{{instance}}")],
                unit="reqps",
            )
        )
        .with_row(row("Prefix cache"))
        .with_panel(
            series(
                "Prefix cache hit rate",
                "Share of prompt tokens each pod found in its prefix cache (hits / queries).",
                [
                    (
                        f"sum by (instance) (rate(vllm:prefix_cache_hits_total{SEL}[{RATE}]))"
                        f" / sum by (instance) (rate(vllm:prefix_cache_queries_total{SEL}[{RATE}]))",
                        "{{instance}}",
                    )
                ],
                unit="percentunit",
            )
        )
        .with_panel(
            series(
                "Prompt tokens: computed and cached",
                "Prompt tokens per second the pods prefilled, and those served from the prefix cache.",
                [
                    (f"sum(rate(vllm:prompt_tokens_total{SEL}[{RATE}]))", "prompt tokens"),
                    (f"sum(rate(vllm:prefix_cache_hits_total{SEL}[{RATE}]))", "prefix cache hits"),
                ],
            )
        )
        .with_row(row("Latency"))
        .with_panel(
            series(
                "Time to first token",
                "Quantiles of the pods' TTFT (queueing plus prefill).",
                _quantiles("vllm:time_to_first_token_seconds", "model_name"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "Inter-token latency",
                "Quantiles of the time between output tokens.",
                _quantiles("vllm:inter_token_latency_seconds", "model_name"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "End-to-end request latency",
                "Quantiles of a request's time in the pod, arrival to last token.",
                _quantiles("vllm:e2e_request_latency_seconds", "model_name"),
                unit="s",
            )
        )
        .with_panel(
            series(
                "Queue time",
                "Quantiles of the time requests waited before their first schedule.",
                _quantiles("vllm:request_queue_time_seconds", "model_name"),
                unit="s",
            )
        )
        .with_row(row("Throughput"))
        .with_panel(
            series(
                "Tokens per second",
                "Prompt and generated tokens per second, per model.",
                [
                    (
                        f"sum by (model_name) (rate(vllm:prompt_tokens_total{SEL}[{RATE}]))",
                        "prompt {{model_name}}",
                    ),
                    (
                        f"sum by (model_name) (rate(vllm:generation_tokens_total{SEL}[{RATE}]))",
                        "generation {{model_name}}",
                    ),
                ],
            )
        )
        .with_panel(
            series(
                "Finished requests",
                "Requests finished per second, by finish reason (stop, length, abort, error).",
                [
                    (
                        f"sum by (finished_reason) (rate(vllm:request_success_total{SEL}[{RATE}]))",
                        "{{finished_reason}}",
                    )
                ],
                unit="reqps",
                stack=True,
            )
        )
    )
    return d
