"""The set of block hashes one pod holds, rebuilt from its KV events."""

from __future__ import annotations

from collections.abc import Iterable

from epp.kv_events.wire import AllBlocksCleared, BlockRemoved, BlockStored, KVEvent


class BlockIndex:
    """Cached block hashes of one pod, kept by applying its events in sequence order."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()

    def apply(self, events: Iterable[KVEvent]) -> None:
        """Apply a message's events, in order."""
        for event in events:
            if isinstance(event, BlockStored):
                self.hashes.update(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                self.hashes.difference_update(event.block_hashes)
            elif isinstance(event, AllBlocksCleared):
                self.hashes.clear()
