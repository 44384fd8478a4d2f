"""ConfigWatcher: reload the config files when they change (polled) or on SIGHUP, and hand a good new
version to the server; a bad one is refused with one WARNING and the old one keeps serving.

Only the traffic documents are applied live (the server's `apply` swaps them); pools, models, endpoints and
the picker config are restart-only, and a change to them is logged as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from epp.config import ConfigError, EppConfig

logger = logging.getLogger(__name__)

DEFAULT_RELOAD_INTERVAL_S = 2.0


@dataclass(frozen=True, slots=True)
class _Stat:
    mtime_ns: int
    size: int


def _stat(path: Path) -> _Stat | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _Stat(st.st_mtime_ns, st.st_size)


def _digest(paths: Sequence[Path]) -> str:
    """One hash over every file's content (a missing file hashes as such: load_config will say why)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            h.update(path.read_bytes())
        except OSError as exc:
            h.update(f"<unreadable: {exc.errno}>".encode())
        h.update(b"\0")
    return h.hexdigest()


def restart_only_changes(old: EppConfig, new: EppConfig) -> list[str]:
    """What changed that a reload does not apply (everything but the traffic documents: the cache too)."""
    changed = []
    if old.picker_config != new.picker_config or old.strategy_name != new.strategy_name:
        changed.append("picker config")
    if old.pools != new.pools or old.models != new.models or old.outlier_settings != new.outlier_settings:
        changed.append("pool")
    if old.static_endpoints != new.static_endpoints:
        changed.append("static endpoints")
    if old.cache != new.cache:
        changed.append("cache")
    return changed


class ReloadMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reloads = Counter(
            "epp_config_reloads", "Config reloads by result (ok, error).", ["result"], registry=registry
        )
        self.last_success = Gauge(
            "epp_config_last_reload_success_timestamp_seconds",
            "Unix time the config was last loaded successfully (start-up included).",
            registry=registry,
        )
        for result in ("ok", "error"):
            self.reloads.labels(result)
        self.last_success.set_to_current_time()


class ConfigWatcher:
    """Polls `paths` (mtime, size, then content hash) every `interval_s` (0: never) and reloads on change
    or `request_reload()` (SIGHUP); `load` reads them (raises ConfigError), `apply` swaps in a good result
    and returns what of it needs a restart.

    A version that failed is not retried until the files change again (or SIGHUP), so it warns once.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        current: EppConfig,
        load: Callable[[], EppConfig],
        apply: Callable[[EppConfig], Sequence[str]],
        registry: CollectorRegistry,
        interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
    ) -> None:
        self._paths = tuple(paths)
        self.current = current
        self._load = load
        self._apply = apply
        self.metrics = ReloadMetrics(registry)
        self._interval = interval_s
        self._stats = self._stats_now()
        self._digest = _digest(self._paths)  # of the version last tried, good or bad
        self._wake = asyncio.Event()
        self._forced = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._paths and self._task is None:
            self._task = asyncio.create_task(self._run(), name="config-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def request_reload(self) -> None:
        """Reload now even if the files look unchanged (the SIGHUP handler)."""
        self._forced = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            timeout = self._interval if self._interval > 0 else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            forced, self._forced = self._forced, False
            try:
                await self.check(force=forced)
            except Exception:  # a bug, not a bad file: keep watching, keep serving
                logger.exception("config reload failed")

    async def check(self, force: bool = False) -> bool | None:
        """Reload if the files changed (or `force`): True applied, False refused, None nothing to do."""
        stats = self._stats_now()
        if not force and stats == self._stats:
            return None
        self._stats = stats
        digest = await asyncio.to_thread(_digest, self._paths)
        if not force and digest == self._digest:
            return None  # touched, not changed
        self._digest = digest
        return await self.reload()

    async def reload(self) -> bool:
        """Load now and apply a good result; a ConfigError is logged and the old config kept."""
        try:
            new = await asyncio.to_thread(self._load)
        except ConfigError as exc:  # its text is already redacted of expanded env values
            self.metrics.reloads.labels("error").inc()
            logger.warning("config reload refused, still serving the previous version: %s", exc)
            return False
        pending = [*restart_only_changes(self.current, new), *self._apply(new)]
        self.metrics.reloads.labels("ok").inc()
        self.metrics.last_success.set_to_current_time()
        for what in pending:
            logger.warning("%s changed: restart to apply", what)
        self.current = new
        logger.info("config reloaded: traffic documents applied")
        return True

    def _stats_now(self) -> tuple[_Stat | None, ...]:
        return tuple(_stat(p) for p in self._paths)
