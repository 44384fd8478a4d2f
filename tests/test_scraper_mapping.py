from pathlib import Path

import pytest

from metrics_scraper import ScrapeError, VllmMetricsParser, parse_vllm_metrics
from metrics_scraper.vllm_mapping import filter_lines

VLLM_032 = Path(__file__).parent / "fixtures" / "vllm" / "vllm-0.32-metrics.txt"  # from shared/fixtures

LOAD = """\
# HELP vllm:num_requests_waiting Number of requests waiting.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 99.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 5.0
"""


@pytest.fixture
def vllm_032_text() -> str:
    return VLLM_032.read_text()


def test_real_vllm_032_scrape(vllm_032_text: str) -> None:
    snap = parse_vllm_metrics(vllm_032_text, scraped_at=12.5)
    assert (snap.waiting, snap.running, snap.kv_cache_usage) == (0, 0, 0.0)
    assert (snap.block_size, snap.num_gpu_blocks, snap.kv_capacity_tokens) == (128, 4096, 128 * 4096)
    assert snap.prefix_cache_queries == 617.0
    assert snap.process_start_time == pytest.approx(1.79536513455e9)
    assert snap.running_loras == frozenset() and snap.waiting_loras == frozenset() and snap.max_lora is None
    assert snap.scraped_at == 12.5
    parser = VllmMetricsParser()
    assert parser.parse(vllm_032_text, scraped_at=12.5) == snap
    assert parser.parse(vllm_032_text, scraped_at=12.5) == snap  # from remembered info lines


def test_prefilter_keeps_only_needed_series(vllm_032_text: str) -> None:
    kept = filter_lines(vllm_032_text)
    assert "vllm:num_requests_waiting{" in kept
    assert "vllm:prefix_cache_queries_total{" in kept
    assert "waiting_by_reason" not in kept and "_bucket" not in kept
    assert len(kept.splitlines()) < 20


def test_legacy_gpu_cache_usage_name() -> None:
    text = LOAD + 'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\n'
    snap = parse_vllm_metrics(text)
    assert (snap.waiting, snap.running, snap.kv_cache_usage) == (3, 5, 0.25)
    assert snap.process_start_time is None and snap.prefix_cache_queries is None


def test_lora_info_uses_newest_sample() -> None:
    def lora(running: str, waiting: str, timestamp: float) -> str:
        labels = f'max_lora="4",running_lora_adapters="{running}",waiting_lora_adapters="{waiting}"'
        return f"vllm:lora_requests_info{{{labels}}} {timestamp}\n"

    text = (
        LOAD
        + 'vllm:kv_cache_usage_perc{engine="0"} 0.5\n'
        + "# TYPE vllm:lora_requests_info gauge\n"
        + lora("old", "", 1.7e9)
        + lora("a,b", "c", 1.9e9)
        + lora("mid", "", 1.8e9)
    )
    snap = parse_vllm_metrics(text)
    assert snap.running_loras == frozenset({"a", "b"})
    assert snap.waiting_loras == frozenset({"c"})
    assert snap.max_lora == 4


def test_multi_engine_sums_counts_and_averages_kv() -> None:
    text = """\
vllm:num_requests_waiting{engine="0"} 1
vllm:num_requests_waiting{engine="1"} 2
vllm:num_requests_running{engine="0"} 4
vllm:num_requests_running{engine="1"} 8
vllm:kv_cache_usage_perc{engine="0"} 0.2
vllm:kv_cache_usage_perc{engine="1"} 0.6
# TYPE vllm:prefix_cache_queries counter
vllm:prefix_cache_queries_total{engine="0"} 10
vllm:prefix_cache_queries_total{engine="1"} 32
vllm:cache_config_info{block_size="16",engine="0",num_gpu_blocks="100"} 1
vllm:cache_config_info{block_size="16",engine="1",num_gpu_blocks="100"} 1
vllm:lora_requests_info{engine="0",max_lora="2",running_lora_adapters="x",waiting_lora_adapters=""} 5
vllm:lora_requests_info{engine="1",max_lora="2",running_lora_adapters="y",waiting_lora_adapters="z"} 6
"""
    snap = parse_vllm_metrics(text)
    assert (snap.waiting, snap.running) == (3, 12)
    assert snap.kv_cache_usage == pytest.approx(0.4)
    assert snap.prefix_cache_queries == 42
    assert (snap.block_size, snap.num_gpu_blocks) == (16, 200)
    assert snap.running_loras == frozenset({"x", "y"}) and snap.waiting_loras == frozenset({"z"})


def test_none_cache_config_labels_become_none() -> None:
    text = (
        LOAD
        + 'vllm:kv_cache_usage_perc 0\nvllm:cache_config_info{block_size="None",num_gpu_blocks="None"} 1\n'
    )
    snap = parse_vllm_metrics(text)
    assert snap.block_size is None and snap.num_gpu_blocks is None and snap.kv_capacity_tokens is None


def test_missing_metrics_are_named() -> None:
    with pytest.raises(ScrapeError) as info:
        parse_vllm_metrics("vllm:num_requests_running 1\n")
    message = str(info.value)
    assert "vllm:num_requests_waiting" in message and "vllm:kv_cache_usage_perc" in message
    assert "vllm:num_requests_running" not in message


@pytest.mark.parametrize(
    "text",
    [
        "<html>not metrics</html>",
        "",
        'vllm:num_requests_waiting{engine="0" 1\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0\n',
        "vllm:num_requests_waiting not-a-number\n",
        "vllm:num_requests_waiting NaN\nvllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0\n",
    ],
)
def test_garbage_raises_scrape_error(text: str) -> None:
    with pytest.raises(ScrapeError):
        parse_vllm_metrics(text)


def test_reused_parser_follows_changing_info_lines() -> None:
    parser = VllmMetricsParser(max_remembered=2)
    for i, adapter in enumerate(["a", "b", "c", "a", "b"]):
        text = (
            LOAD
            + "vllm:kv_cache_usage_perc 0.1\n"
            + f'vllm:cache_config_info{{block_size="{16 * (i + 1)}",num_gpu_blocks="10"}} 1\n'
            + f'vllm:lora_requests_info{{running_lora_adapters="{adapter}",waiting_lora_adapters=""}} {i}\n'
        )
        snap = parser.parse(text)
        assert snap.running_loras == frozenset({adapter})
        assert snap.block_size == 16 * (i + 1)
