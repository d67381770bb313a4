"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

One line per domain, for the sync and the asyncio client alike (the same names on both sides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcache.caps import AsyncCaps, Caps
from adcache.sessions import AsyncSessions, Sessions

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


class SyncFacades:
    sessions: Sessions
    caps: Caps

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        self.sessions = Sessions(self)
        self.caps = Caps(self)


class AsyncFacades:
    sessions: AsyncSessions
    caps: AsyncCaps

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        self.sessions = AsyncSessions(self)
        self.caps = AsyncCaps(self)
