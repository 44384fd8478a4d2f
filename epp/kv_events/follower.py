"""Follow the KV events of every pod of the pool into one sink (the precise index), resyncing on losses.

One subscription per publisher of each endpoint in the datastore: ADDED subscribes, REMOVED unsubscribes and
drops the pod's blocks, RESTARTED (the scraper saw the start time change or counters go back) drops them and
follows the new engine from its start. A pod's view is *synced* (the sink trusts it) once it is *rebuilt*:

- the stream was followed from the engine's seq 0 (live, or replayed from the replay socket: a young engine,
  a restart noticed in time, or a gap the replay buffer still covers), or
- an `AllBlocksCleared` was applied (the cache was empty then; every later change is known), or
- the stream was followed without a gap for `rebuildAfterSeconds` since the loss: the view then holds only
  blocks seen stored and not removed since, a subset of the pod's blocks (under-credit, never stale credit).

Losses (the view becomes unknown and the pod's blocks are dropped at once): an unfillable gap, the sequence
going back, a dropped connection, the scraper's RESTARTED, a socket error (re-opened with back-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import httpx
import zmq
import zmq.asyncio
from prometheus_client import CollectorRegistry

from epp.config.kv_events import KVEventsSpec
from epp.datastore import Datastore, Endpoint, EndpointEvent
from epp.discovery.backoff import Backoff
from epp.kv_events.follower_status import NOT_SUBSCRIBED, SYNCED, UNKNOWN, FollowerMetrics, PodStatus
from epp.kv_events.sink import KVEventSink
from epp.kv_events.sources import SourceAddress, SourceError, configured_sources, discover
from epp.kv_events.subscriber import Gap, KVEventSubscriber, Received, Restart, Started
from epp.kv_events.wire import AllBlocksCleared

logger = logging.getLogger(__name__)


@runtime_checkable
class _Forgets(Protocol):
    """A sink that can drop a pod entirely (PreciseIndex.forget), beyond KVEventSink's reset."""

    def forget(self, pod: str) -> None: ...


@dataclass
class _Source:
    address: SourceAddress
    subscriber: KVEventSubscriber
    rebuilt: bool = False
    # Whether `subscriber.complete` speaks for the sink's view: not for a source whose blocks were dropped
    # because another source of the pod lost messages (its stream is complete, the view of it is not).
    trust_complete: bool = True


@dataclass
class _Pod:
    endpoint: Endpoint
    status: PodStatus
    task: asyncio.Task[None] | None = None
    sources: list[_Source] = field(default_factory=list)
    epoch: int = 0  # bumped at every loss: a rebuild timer of an earlier loss does nothing
    timer: asyncio.TimerHandle | None = None


class KVEventFollower:
    """Subscriptions for every endpoint of `datastore`, feeding `sink`. Used from one asyncio loop."""

    def __init__(
        self,
        datastore: Datastore,
        sink: KVEventSink,
        spec: KVEventsSpec,
        *,
        client: httpx.AsyncClient | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`client` asks pods' /kv_event_sources (default: our own, closed by `stop`)."""
        self.datastore = datastore
        self.sink = sink
        self.spec = spec
        self._client = client
        self._own_client: httpx.AsyncClient | None = None
        self.metrics = FollowerMetrics(registry)
        self._clock = clock
        self._pods: dict[str, _Pod] = {}
        self._ctx: zmq.asyncio.Context | None = None
        self._subscribed = False
        self._running = False

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Follow every endpoint now in the datastore, and those added later."""
        if self._running:
            return
        self._running = True
        self._ctx = zmq.asyncio.Context()
        if self._client is None:
            self._own_client = httpx.AsyncClient(trust_env=False, timeout=2.0)
        if not self._subscribed:
            self.datastore.subscribe(self._on_endpoint_event)
            self._subscribed = True
        for endpoint in self.datastore.endpoints():
            self._follow(endpoint)

    async def stop(self) -> None:
        """Close every subscription; the sink keeps what it has (nothing more will change it)."""
        self._running = False
        for name in list(self._pods):
            await self._unfollow(name, reset=False)
        if self._own_client is not None:
            await self._own_client.aclose()
            self._own_client = None
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None

    def status(self, pod: str) -> PodStatus:
        """The pod's status; NOT_SUBSCRIBED for one not followed."""
        known = self._pods.get(pod)
        return known.status if known is not None else PodStatus(reason="not in the pool")

    def statuses(self) -> dict[str, dict[str, object]]:
        return {name: pod.status.as_dict() for name, pod in sorted(self._pods.items())}

    # -- membership --------------------------------------------------------------------------------------
    def _on_endpoint_event(self, event: EndpointEvent, endpoint: Endpoint) -> None:
        if not self._running:
            return
        if event is EndpointEvent.ADDED:
            self._follow(endpoint)
        elif event is EndpointEvent.REMOVED:
            pod = self._pods.get(endpoint.name)
            if pod is not None:
                self._cancel(pod)
                del self._pods[endpoint.name]
            self.sink.reset(endpoint.name, synced=False)
            if isinstance(self.sink, _Forgets):
                self.sink.forget(endpoint.name)  # not even an empty view kept for a pod that left
            self.metrics.forget(endpoint.name)
        elif event is EndpointEvent.RESTARTED:
            self._on_restarted(endpoint)

    def _on_restarted(self, endpoint: Endpoint) -> None:
        pod = self._pods.get(endpoint.name)
        if pod is None:
            return
        self._lose(pod, "scrape_restart", "the scraper saw the pod restart", keep=pod.sources)
        if not self.spec.bind:
            # A new subscription: discovered again (the new engine may publish elsewhere) and asked for its
            # replay from seq 0, so even an idle new engine is known exactly when it has a replay socket.
            self._cancel(pod)
            pod.task = asyncio.create_task(self._run(pod), name=f"kv-events-{endpoint.name}")
        else:
            # Keep the bound socket (the publisher dials it; re-binding could fail while it is released).
            for source in pod.sources:
                source.subscriber.forget()  # the next message is judged as the new engine's

    def _follow(self, endpoint: Endpoint) -> None:
        if endpoint.name in self._pods:
            return
        if configured_sources(self.spec, endpoint) == []:
            return  # no template, no discovery, no pods: entry
        pod = _Pod(endpoint, PodStatus())
        self._pods[endpoint.name] = pod
        self.sink.reset(endpoint.name, synced=False)
        pod.task = asyncio.create_task(self._run(pod), name=f"kv-events-{endpoint.name}")

    def _cancel(self, pod: _Pod) -> None:
        if pod.task is not None:
            pod.task.cancel()
            pod.task = None
        if pod.timer is not None:
            pod.timer.cancel()
            pod.timer = None

    async def _unfollow(self, name: str, *, reset: bool) -> None:
        pod = self._pods.pop(name, None)
        if pod is None:
            return
        task = pod.task
        self._cancel(pod)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if reset:
            self.sink.reset(name, synced=False)

    # -- one pod -----------------------------------------------------------------------------------------
    async def _run(self, pod: _Pod) -> None:
        """Find the pod's publishers, follow them; on an error start over after a back-off."""
        reconnect = self.spec.reconnect
        backoff = Backoff(reconnect.initial_seconds, reconnect.max_seconds)
        name = pod.endpoint.name
        while True:
            sources: list[_Source] = []
            try:
                addresses = await self._addresses(pod)
                if not addresses:
                    raise SourceError("the pod lists no KV-event sources")
                sources = self._open(pod, addresses)
                backoff.reset()
                reason = await self._consume_all(pod, sources)
            except (SourceError, zmq.ZMQError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            finally:
                # Also on cancellation (REMOVED, RESTARTED, stop): the sockets are this run's to close.
                for source in sources:
                    source.subscriber.close()
                if pod.sources is sources:
                    pod.sources = []
            if pod.status.state != NOT_SUBSCRIBED:
                self._lose(pod, "error", reason)
            self._set_state(pod, NOT_SUBSCRIBED, reason)
            delay = backoff.next_delay()
            logger.info("KV events of %s: %s; retrying in %.1fs", name, reason, delay)
            await asyncio.sleep(delay)

    async def _consume_all(self, pod: _Pod, sources: list[_Source]) -> str:
        """Follow every source until one fails; why it stopped."""
        errors: list[BaseException] = []
        try:
            async with asyncio.TaskGroup() as group:
                for source in sources:
                    group.create_task(self._consume(pod, source))
        except* (zmq.ZMQError, OSError) as group_exc:
            errors.extend(group_exc.exceptions)
        except* Exception as group_exc:  # a bug must not end the pod's subscription for good
            for exc in group_exc.exceptions:
                logger.error("KV events of %s: unexpected error", pod.endpoint.name, exc_info=exc)
            errors.extend(group_exc.exceptions)
        return "; ".join(f"{type(e).__name__}: {e}" for e in errors) or "stream ended"

    async def _addresses(self, pod: _Pod) -> list[SourceAddress]:
        configured = configured_sources(self.spec, pod.endpoint)
        if configured is not None:
            return configured
        client = self._client or self._own_client
        assert client is not None
        return await discover(client, pod.endpoint)

    def _open(self, pod: _Pod, addresses: list[SourceAddress]) -> list[_Source]:
        assert self._ctx is not None
        sources: list[_Source] = []
        try:
            for address in addresses:
                sub = KVEventSubscriber(
                    self._ctx,
                    address.endpoint,
                    bind=self.spec.bind,
                    replay_endpoint=address.replay_endpoint,
                    topic=address.topic,
                    replay_timeout_ms=self.spec.replay_timeout_ms,
                )
                sources.append(_Source(address, sub))
        except zmq.ZMQError:
            for source in sources:
                source.subscriber.close()
            raise
        pod.sources = sources
        pod.status.sources = [s.subscriber.endpoint or s.address.endpoint for s in sources]
        self._lose(pod, None, "subscribed: waiting for a rebuild", keep=sources)
        return sources

    async def _consume(self, pod: _Pod, source: _Source) -> None:
        name = pod.endpoint.name
        sub = source.subscriber
        stream = sub.stream()
        try:
            async for outcome in stream:
                status = pod.status
                if isinstance(outcome, Received):
                    msg = outcome.message
                    self.sink.apply(name, msg)
                    status.messages += 1
                    status.last_seq = msg.seq
                    self.metrics.messages.labels(name).inc()
                    if any(isinstance(e, AllBlocksCleared) for e in msg.events):
                        self._rebuilt(pod, source, "AllBlocksCleared applied")
                    elif sub.complete and source.trust_complete:
                        self._rebuilt(pod, source, "followed from seq 0")
                elif isinstance(outcome, Started):
                    if outcome.complete:
                        self._rebuilt(pod, source, outcome.reason)
                elif isinstance(outcome, Gap):
                    status.gaps += 1
                    if outcome.filled:
                        status.gaps_filled += 1
                        self.metrics.gaps.labels(name, "filled").inc()
                    else:
                        status.lost_messages = sub.lost
                        self.metrics.gaps.labels(name, "lost").inc()
                        lost = f"seq {outcome.start}..{outcome.end - 1} lost: {outcome.reason}"
                        self._lose(pod, "gap", lost, keep=(source,))
                elif isinstance(outcome, Restart):
                    status.restarts += 1
                    kind = "disconnect" if outcome.reason == "connection lost" else "restart"
                    self._lose(pod, kind, outcome.reason, keep=(source,))
                status.replays = sum(s.subscriber.replays for s in pod.sources)
        finally:
            await stream.aclose()

    # -- sync state --------------------------------------------------------------------------------------
    def _lose(self, pod: _Pod, kind: str | None, reason: str, keep: Iterable[_Source] = ()) -> None:
        """Drop the pod's blocks; it stays unknown until every source is rebuilt. `keep`: the sources whose
        subscriber's `complete` still tells an exact rebuild (the one that lost, fresh or forgotten ones)."""
        name = pod.endpoint.name
        self.sink.reset(name, synced=False)
        pod.epoch += 1
        kept = {id(s) for s in keep}
        for source in pod.sources:
            source.rebuilt = False
            source.trust_complete = id(source) in kept
        if kind is not None:
            pod.status.resets += 1
            self.metrics.resets.labels(name, kind).inc()
            logger.info("KV events of %s: view unknown (%s)", name, reason)
        self._set_state(pod, UNKNOWN, reason)
        if pod.timer is not None:
            pod.timer.cancel()
            pod.timer = None
        window = self.spec.rebuild_after_seconds
        if window > 0:
            epoch = pod.epoch
            pod.timer = asyncio.get_running_loop().call_later(window, self._window_elapsed, pod, epoch)

    def _window_elapsed(self, pod: _Pod, epoch: int) -> None:
        pod.timer = None
        if epoch != pod.epoch or self._pods.get(pod.endpoint.name) is not pod or not pod.sources:
            return
        for source in pod.sources:
            source.rebuilt = True
        self._check_synced(pod, f"followed for {self.spec.rebuild_after_seconds:g}s without a gap")

    def _rebuilt(self, pod: _Pod, source: _Source, reason: str) -> None:
        if not source.rebuilt:
            source.rebuilt = True
            self._check_synced(pod, reason)

    def _check_synced(self, pod: _Pod, reason: str) -> None:
        if pod.status.state == SYNCED or not all(s.rebuilt for s in pod.sources):
            return
        self.sink.mark_synced(pod.endpoint.name)
        if pod.timer is not None:
            pod.timer.cancel()
            pod.timer = None
        self._set_state(pod, SYNCED, reason)

    def _set_state(self, pod: _Pod, state: str, reason: str) -> None:
        status = pod.status
        if status.state != state:
            status.since = self._clock()
        status.state, status.reason = state, reason
        if state == NOT_SUBSCRIBED:
            status.sources = []
        self.metrics.synced.labels(pod.endpoint.name).set(1 if state == SYNCED else 0)
