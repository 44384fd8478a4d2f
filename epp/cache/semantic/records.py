"""How the semantic tier keeps an entry in Redis: one hash per entry, its key naming the model.

Key `epp:sem:v1:{model_digest}:{entry_id}` (model_digest from epp.cache.key, so truncate-by-model is one
SCAN MATCH; entry_id 32 random hex digits), fields:
  partition, model, tenant, text   strings (tenant is the credential's digest, never the credential)
  vector                           float32 little-endian bytes of the unit embedding
  embedder                         the embedder's name: vectors of another embedder are not loaded
  answer                           the StoredAnswer body (the JSON answer as the model sent it)
  created_at, expires_at, upstream_s   unix seconds / seconds, as decimal text
and an EXPIRE (PEXPIRE) of the entry's TTL, so Redis drops it by itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from epp.cache.key import model_digest
from epp.cache.semantic.index import PartitionIndexes, Vector
from epp.cache.types import CacheQuery, StoredAnswer

PREFIX = "epp:sem:v1:"
ENTRY_ID = re.compile(r"[0-9a-f]{32}")
# What a hit fetches (not the vector, ~1.5 kB): answer first, in this order
HIT_FIELDS = ("answer", "model", "tenant", "created_at", "upstream_s", "text")
# What `load` reads to rebuild the indexes (not the answer)
LOAD_FIELDS = ("partition", "model", "tenant", "text", "vector", "embedder", "created_at", "expires_at")
INFO_FIELDS = ("model", "tenant", "created_at", "text")


def redis_key(model: str, entry_id: str) -> str:
    return f"{PREFIX}{model_digest(model)}:{entry_id}"


def model_pattern(model: str | None) -> str:
    return f"{PREFIX}{model_digest(model)}:*" if model is not None else PREFIX + "*"


def entry_id_of(key: bytes | str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text.rsplit(":", 1)[-1]


@dataclass(frozen=True, slots=True)
class EntryMeta:
    """What the tier keeps in memory per entry next to its vector: enough to guard and check a candidate
    without a Redis round trip."""

    key: str
    model: str
    tenant: str
    text: str
    created_at: float


def encode(
    query: CacheQuery, answer: StoredAnswer, vec: Vector, embedder: str, expires_at: float
) -> dict[str, bytes | str]:
    return {
        "partition": query.partition,
        "model": query.model,
        "tenant": query.tenant,
        "text": query.text,
        "vector": np.asarray(vec, dtype="<f4").tobytes(),
        "embedder": embedder,
        "answer": answer.body,
        "created_at": repr(answer.created_at),
        "expires_at": repr(expires_at),
        "upstream_s": repr(answer.upstream_s),
    }


def decode_hit(values: list[bytes | None]) -> tuple[StoredAnswer, str] | None:
    """HMGET HIT_FIELDS -> (answer, tenant), or None for a vanished or unreadable entry."""
    body, model, tenant, created_at, upstream_s, text = values
    if body is None or model is None or tenant is None:
        return None
    try:
        answer = StoredAnswer(
            body=body,
            model=model.decode(),
            created_at=float(created_at or 0),
            upstream_s=float(upstream_s or 0),
            text=(text or b"").decode(),
        )
    except (UnicodeDecodeError, ValueError):
        return None
    return answer, tenant.decode()


@dataclass(frozen=True, slots=True)
class Loaded:
    entry_id: str
    partition: str
    vector: Vector
    expires_at: float | None
    meta: EntryMeta


def decode_load(key: bytes, values: list[bytes | None], embedder: str, dim: int) -> Loaded | None:
    """HMGET LOAD_FIELDS -> an entry to index; None if unreadable or of another embedder."""
    partition, model, tenant, text, vector, name, created_at, expires_at = values
    if partition is None or model is None or tenant is None or vector is None or name is None:
        return None
    if name.decode(errors="replace") != embedder or len(vector) != 4 * dim:
        return None
    try:
        meta = EntryMeta(
            key.decode(), model.decode(), tenant.decode(), (text or b"").decode(), float(created_at or 0)
        )
        expires = float(expires_at) if expires_at else None
    except (UnicodeDecodeError, ValueError):
        return None
    vec = np.frombuffer(vector, dtype="<f4").astype(np.float32)
    return Loaded(entry_id_of(key), partition.decode(), vec, expires, meta)


def build_indexes(
    loaded: list[Loaded], like: PartitionIndexes[EntryMeta], threads: int
) -> PartitionIndexes[EntryMeta]:
    """Fresh indexes (`like`'s settings) of the entries `load` read; seconds at 100k: run off the loop."""
    fresh = like.empty_like(threads)
    fresh.convert_inline = True  # on this worker thread, graphs may be built right away
    loaded.sort(key=lambda e: e.meta.created_at)  # insertion order is age: the caps evict the oldest
    by_partition: dict[str, list[Loaded]] = {}
    for entry in loaded:
        by_partition.setdefault(entry.partition, []).append(entry)
    for partition, entries in by_partition.items():
        fresh.add_many(
            partition,
            [e.entry_id for e in entries],
            np.stack([e.vector for e in entries]),
            [e.expires_at for e in entries],
            [e.meta for e in entries],
        )
    fresh.reorder(e.entry_id for e in loaded)  # the global cap evicts the oldest of all partitions
    fresh.convert_inline = like.convert_inline
    return fresh
