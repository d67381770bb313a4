"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

One line per domain, for the sync and the asyncio client alike (the same names on both sides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcache.monitor import AsyncMonitor, Monitor
from adcache.sessions import AsyncSessions, Sessions
from adcache.stats import AsyncStats, Stats

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


class SyncFacades:
    sessions: Sessions
    stats: Stats
    monitor: Monitor

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        self.sessions = Sessions(self)
        self.stats = Stats(self)
        self.monitor = Monitor(self)


class AsyncFacades:
    sessions: AsyncSessions
    stats: AsyncStats
    monitor: AsyncMonitor

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        self.sessions = AsyncSessions(self)
        self.stats = AsyncStats(self)
        self.monitor = AsyncMonitor(self)
