"""The provider stage in the pipeline, swappable whole when the traffic documents are reloaded.

Each request takes the stage current when it arrives and keeps it to the end: a reload never changes the
documents, providers or rewrites of a request already in flight.
"""

from __future__ import annotations

from gateway.context import Reply, RequestContext
from gateway.providers import ProviderStage


class SwappableProviders:
    """Delegates to `current` (None: no traffic documents, every request goes on to the picker)."""

    name = "providers"

    def __init__(self, current: ProviderStage | None) -> None:
        self.current = current

    async def run(self, ctx: RequestContext) -> Reply | None:
        stage = self.current  # read once: a swap during this request leaves it on the old stage
        if stage is None:
            return None
        return await stage.run(ctx)
