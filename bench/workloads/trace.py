"""Replay of a Mooncake-format trace: one JSON object a line with `timestamp` (ms), `input_length`,
`output_length` and `hash_ids`, the ids of the prompt's 512-token blocks (equal ids, equal blocks).

Each block id becomes a fixed text of `block_tokens` tokens (the same id, the same words, in every request),
so requests whose id lists share a prefix share that prompt prefix token for token; the last block is cut to
the request's length. `block_tokens` below 512 shrinks every prompt by the same factor so the trace fits a
smaller fleet, and the timestamps are scaled so the window's mean rate is the one asked for.
"""

from __future__ import annotations

import gzip
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.multi_round_qa.prompts import WORDS, ChatMessage
from bench.workloads.schedule import ScheduledRequest

TRACE_BLOCK_TOKENS = 512
_DATA = Path(__file__).resolve().parent.parent / "data" / "traces"
SHIPPED_TRACE = _DATA / "mooncake-synthetic-trace.jsonl.gz"
# The full trace in the shared fixtures, when present; the shipped gzip copy has the same lines.
SHARED_TRACE = Path(__file__).resolve().parents[3] / "shared/fixtures/traces/mooncake-synthetic-trace.jsonl"


class TraceError(ValueError):
    """The trace file is missing or not in Mooncake format."""


@dataclass(frozen=True)
class TraceRow:
    """One request of the trace: arrival (ms), prompt and answer lengths (tokens), prompt block ids."""

    timestamp_ms: float
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]


def default_trace_path() -> Path:
    """The shared fixture when it exists, else the copy shipped in bench/data/traces."""
    return SHARED_TRACE if SHARED_TRACE.is_file() else SHIPPED_TRACE


def load_trace(path: Path) -> list[TraceRow]:
    """The rows of a Mooncake trace (`.jsonl` or `.jsonl.gz`); TraceError naming the file and line."""
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror or exc}") from exc
    rows = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            ids = obj["hash_ids"]
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise TypeError("hash_ids must be a list of integers")
            rows.append(
                TraceRow(
                    float(obj["timestamp"]), int(obj["input_length"]), int(obj["output_length"]), tuple(ids)
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"{path}: line {number}: not a Mooncake trace row: {exc}") from exc
    if not rows:
        raise TraceError(f"{path}: no requests")
    return rows


def block_words(block_id: int, block_tokens: int, seed: int) -> list[str]:
    """The words (one token each) that stand for trace block `block_id`."""
    rng = random.Random(f"trace-block-{seed}-{block_id}")
    return [rng.choice(WORDS) for _ in range(block_tokens)]


def prompt_words(row: TraceRow, block_tokens: int, max_blocks: int, seed: int) -> list[str]:
    """The prompt of `row` as words: its blocks in order (at most `max_blocks`), the last cut to length."""
    ids = row.hash_ids[:max_blocks]
    scale = block_tokens / TRACE_BLOCK_TOKENS
    total = min(max(1, round(row.input_length * scale)), len(ids) * block_tokens)
    words: list[str] = []
    for block_id in ids:
        words += block_words(block_id, block_tokens, seed)
    return words[:total]


def trace_schedule(
    rows: Sequence[TraceRow],
    block_tokens: int,
    rate: float,
    max_blocks: int,
    max_output: int,
    seed: int,
    salt: str = "",
) -> list[ScheduledRequest]:
    """The rows as open-loop requests, their timestamps scaled so the mean rate is `rate` per second."""
    if not rows:
        return []
    start = rows[0].timestamp_ms
    span_s = (rows[-1].timestamp_ms - start) / 1000
    factor = (len(rows) - 1) / rate / span_s if span_s > 0 and rate > 0 else 1.0
    requests = []
    for row in rows:
        text = salt + "".join(" " + w for w in prompt_words(row, block_tokens, max_blocks, seed))
        messages: list[ChatMessage] = [{"role": "user", "content": text}]
        at = (row.timestamp_ms - start) / 1000 * factor
        first = row.hash_ids[0] if row.hash_ids else -1
        requests.append(ScheduledRequest(at, first, messages, max(1, min(row.output_length, max_output))))
    return requests
