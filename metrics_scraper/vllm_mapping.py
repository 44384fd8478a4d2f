"""Map a vLLM `/metrics` text body to a `MetricsSnapshot`.

A real vLLM scrape is ~600 lines, mostly histogram buckets we never read, and prometheus_client's parser
spends 15-25 ms on all of it. Lines are therefore pre-filtered to the dozen we need and only those are handed
to `text_string_to_metric_families`: ~1 ms per body, ~0.5 ms with `VllmMetricsParser`, which also remembers
the parsed `*_info` lines (measured on the vLLM 0.32 fixture on a shared 2-core machine).

Data-parallel pods expose one series per `engine` label. Counts (waiting, running, GPU blocks, prefix-cache
queries and hits, prompt tokens, prefill seconds) are summed over engines; KV-cache usage is the mean over
engines, which with equal-sized engines is the fraction of the pod's total KV capacity
(`block_size * summed num_gpu_blocks`) in use.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from epp.datastore import MetricsSnapshot

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_USAGE = "vllm:kv_cache_usage_perc"
KV_USAGE_LEGACY = "vllm:gpu_cache_usage_perc"  # vLLM < 0.10
LORA_INFO = "vllm:lora_requests_info"
CACHE_CONFIG = "vllm:cache_config_info"
START_TIME = "process_start_time_seconds"
PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
# The prefill rate's counters (scorers/prefill_scrape_rate.py). vLLM 0.7-0.9 named the hits counter
# `gpu_prefix_cache_hits`; of the histogram only `_sum` and `_count` are read.
PROMPT_TOKENS = "vllm:prompt_tokens_total"
PREFIX_HITS = "vllm:prefix_cache_hits_total"
PREFIX_HITS_LEGACY = "vllm:gpu_prefix_cache_hits_total"
PREFILL_TIME_SUM = "vllm:request_prefill_time_seconds_sum"
PREFILL_TIME_COUNT = "vllm:request_prefill_time_seconds_count"

_SAMPLE_NAMES = (
    WAITING,
    RUNNING,
    KV_USAGE,
    KV_USAGE_LEGACY,
    LORA_INFO,
    CACHE_CONFIG,
    START_TIME,
    PREFIX_QUERIES,
)
# Summed over engines with no label read: their values are read here, not by prometheus_client's parser,
# which costs ~20 us a line (with them, a fixture parse went from 0.29 to 0.41 ms; read here, 0.32 ms).
_SUMMED_NAMES = frozenset(
    (PROMPT_TOKENS, PREFIX_HITS, PREFIX_HITS_LEGACY, PREFILL_TIME_SUM, PREFILL_TIME_COUNT)
)
# Sample lines and `# TYPE` lines of the wanted series are kept (a counter's TYPE line may or may not carry
# `_total`). `str.startswith` is a cheap first cut; the exact name check then drops `..._waiting_by_reason`.
_PARSED_NAMES = frozenset((*_SAMPLE_NAMES, PREFIX_QUERIES.removesuffix("_total")))
_WANTED_NAMES = _PARSED_NAMES | _SUMMED_NAMES
_WANTED_PREFIXES = tuple(_WANTED_NAMES) + tuple(f"# TYPE {n}" for n in _PARSED_NAMES)
_LINE_NAME = re.compile(r"(?:# TYPE )?([^{\s]+)")
_INFO_NAMES = (CACHE_CONFIG, LORA_INFO)


class ScrapeError(Exception):
    """A scrape did not yield a usable snapshot (bad HTTP answer, unparsable or incomplete metrics)."""


def filter_lines(text: str) -> str:
    """The lines of `text` that matter for `parse_vllm_metrics`, newline-terminated."""
    return "".join(line + "\n" for _, line in _wanted_lines(text))


def parse_vllm_metrics(text: str, scraped_at: float = 0.0) -> MetricsSnapshot:
    """Parse a vLLM Prometheus text body; raises `ScrapeError` if it is unparsable or lacks load metrics."""
    return VllmMetricsParser().parse(text, scraped_at)


class VllmMetricsParser:
    """`parse_vllm_metrics` that remembers parsed `*_info` lines: they rarely change between scrapes and
    `cache_config_info`, with ~40 labels, costs more to parse than all other kept lines together."""

    def __init__(self, max_remembered: int = 256) -> None:
        self.max_remembered = max_remembered
        self._info_samples: dict[str, list[Sample]] = {}

    def parse(self, text: str, scraped_at: float = 0.0) -> MetricsSnapshot:
        by_name: dict[str, list[Sample]] = defaultdict(list)
        plain: list[str] = []
        sums: dict[str, float] = {}
        for name, line in _wanted_lines(text):
            if name in _SUMMED_NAMES and not line.startswith("#"):
                sums[name] = sums.get(name, 0.0) + _value(line)
            elif line.startswith(_INFO_NAMES):
                for sample in self._parse_info_line(line):
                    by_name[sample.name].append(sample)
            else:
                plain.append(line + "\n")
        for sample in _parse("".join(plain)):
            by_name[sample.name].append(sample)
        return _snapshot(by_name, sums, scraped_at)

    def _parse_info_line(self, line: str) -> list[Sample]:
        samples = self._info_samples.get(line)
        if samples is None:
            if len(self._info_samples) >= self.max_remembered:
                self._info_samples.clear()
            samples = self._info_samples[line] = list(_parse(line + "\n"))
        return samples


def _wanted_lines(text: str) -> Iterator[tuple[str, str]]:
    """(series name, line) of the lines that matter."""
    for line in text.split("\n"):
        if line.startswith(_WANTED_PREFIXES):
            match = _LINE_NAME.match(line)
            if match and match.group(1) in _WANTED_NAMES:
                yield match.group(1), line.rstrip("\r")


def _value(line: str) -> float:
    """A sample line's value: the first field after the labels (a timestamp may follow)."""
    labels_end = line.rfind("}")  # label values escape only backslash, quote and newline: the last brace
    rest = line[labels_end + 1 :] if labels_end >= 0 else line.split(None, 1)[-1]
    try:
        return float(rest.split()[0])
    except (ValueError, IndexError) as exc:
        raise ScrapeError(f"unparsable metrics line: {line[:200]!r}") from exc


def _parse(text: str) -> Iterator[Sample]:
    try:
        for family in text_string_to_metric_families(text):
            yield from family.samples
    except ValueError as exc:  # the parser's only error type, for any malformed line
        raise ScrapeError(f"unparsable metrics text: {exc}") from exc


def _snapshot(by_name: dict[str, list[Sample]], sums: dict[str, float], scraped_at: float) -> MetricsSnapshot:
    kv_samples = by_name.get(KV_USAGE) or by_name.get(KV_USAGE_LEGACY)
    missing = [n for n in (WAITING, RUNNING) if not by_name.get(n)]
    if not kv_samples:
        missing.append(f"{KV_USAGE} (or {KV_USAGE_LEGACY})")
    if missing or not kv_samples:
        raise ScrapeError(f"vLLM metrics missing: {', '.join(missing)}")

    running_loras, waiting_loras, max_lora = _lora_info(by_name.get(LORA_INFO, []))
    block_size, num_gpu_blocks = _cache_config(by_name.get(CACHE_CONFIG, []))
    start = by_name.get(START_TIME)
    queries = by_name.get(PREFIX_QUERIES)
    hits = _finite(sums.get(PREFIX_HITS))
    return MetricsSnapshot(
        waiting=round(_sum(WAITING, by_name[WAITING])),
        running=round(_sum(RUNNING, by_name[RUNNING])),
        kv_cache_usage=_sum(kv_samples[0].name, kv_samples) / len(kv_samples),
        running_loras=running_loras,
        waiting_loras=waiting_loras,
        max_lora=max_lora,
        block_size=block_size,
        num_gpu_blocks=num_gpu_blocks,
        process_start_time=start[0].value if start else None,
        prefix_cache_queries=_sum(PREFIX_QUERIES, queries) if queries else None,
        prompt_tokens=_finite(sums.get(PROMPT_TOKENS)),
        prefix_cache_hits=_finite(sums.get(PREFIX_HITS_LEGACY)) if hits is None else hits,
        prefill_time_s=_finite(sums.get(PREFILL_TIME_SUM)),
        prefill_count=_finite(sums.get(PREFILL_TIME_COUNT)),
        scraped_at=scraped_at,
    )


def _sum(name: str, samples: Iterable[Sample]) -> float:
    total = 0.0
    for s in samples:
        if not math.isfinite(s.value):
            raise ScrapeError(f"{name} has non-finite value {s.value}")
        total += s.value
    return total


def _finite(value: float | None) -> float | None:
    """An optional counter: None when absent or not finite (it only feeds an estimate; the scrape stands)."""
    return value if value is not None and math.isfinite(value) else None


def _lora_info(samples: list[Sample]) -> tuple[frozenset[str], frozenset[str], int | None]:
    """Union over engines of each engine's newest sample (vLLM emits one per change, valued by timestamp)."""
    newest: dict[str, Sample] = {}
    for s in samples:
        engine = s.labels.get("engine", "")
        if engine not in newest or s.value > newest[engine].value:
            newest[engine] = s
    running: set[str] = set()
    waiting: set[str] = set()
    max_lora: int | None = None
    for s in newest.values():
        running.update(_names(s.labels.get("running_lora_adapters", "")))
        waiting.update(_names(s.labels.get("waiting_lora_adapters", "")))
        engine_max = _int_label(s.labels.get("max_lora"))
        if engine_max is not None:
            max_lora = engine_max if max_lora is None else max(max_lora, engine_max)
    return frozenset(running), frozenset(waiting), max_lora


def _cache_config(samples: list[Sample]) -> tuple[int | None, int | None]:
    """Block size (same on all engines) and GPU blocks summed over engines; None when not reported."""
    block_size: int | None = None
    blocks: list[int | None] = []
    for s in samples:
        block_size = block_size or _int_label(s.labels.get("block_size"))
        blocks.append(_int_label(s.labels.get("num_gpu_blocks")))
    if not blocks or None in blocks:
        return block_size, None
    return block_size, sum(b for b in blocks if b is not None)


def _names(label: str) -> list[str]:
    return [n.strip() for n in label.split(",") if n.strip()]


def _int_label(value: str | None) -> int | None:
    """Integer label value; None for absent, "None" or otherwise non-integer (these labels are optional)."""
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None
