"""The interface between whatever follows a pod's KV events and whatever keeps what they say."""

from __future__ import annotations

from typing import Protocol

from epp.kv_events.wire import EventMessage


class KVEventSink(Protocol):
    """Receives each pod's decoded KV-event messages, in sequence order, and the follower's sync verdicts.

    A pod's view is *synced* while the follower believes it has seen every message since the pod's cache was
    last known (empty at a start or restart, or rebuilt by a replay). While it is not, readers must not trust
    the pod's blocks (the precise scorer falls back to the approximate index for that pod).
    """

    def apply(self, pod: str, message: EventMessage) -> None:
        """Apply one message's events, in order."""
        ...

    def reset(self, pod: str, *, synced: bool) -> None:
        """Drop every block of `pod`; `synced=False` also marks its view unknown until `mark_synced`."""
        ...

    def mark_synced(self, pod: str) -> None:
        """From now on `pod`'s view is complete (every later message will be applied)."""
        ...

    def is_synced(self, pod: str) -> bool:
        """Whether `pod`'s view can be trusted; False for a pod never seen."""
        ...
