"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

One line per domain, for the sync and the asyncio client alike (the same names on both sides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcache.auctions import AsyncAuctions, Auctions
from adcache.sessions import AsyncSessions, Sessions

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


class SyncFacades:
    sessions: Sessions
    auctions: Auctions

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        self.sessions = Sessions(self)
        self.auctions = Auctions(self)


class AsyncFacades:
    sessions: AsyncSessions
    auctions: AsyncAuctions

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        self.sessions = AsyncSessions(self)
        self.auctions = AsyncAuctions(self)
