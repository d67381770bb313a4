"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

One line per domain, for the sync and the asyncio client alike (the same names on both sides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcache.caches import AsyncCaches, Caches
from adcache.sessions import AsyncSessions, Sessions

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


class SyncFacades:
    sessions: Sessions
    caches: Caches

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        self.sessions = Sessions(self)
        self.caches = Caches(self)


class AsyncFacades:
    sessions: AsyncSessions
    caches: AsyncCaches

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        self.sessions = AsyncSessions(self)
        self.caches = AsyncCaches(self)
