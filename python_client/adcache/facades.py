"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

One line per domain, for the sync and the asyncio client alike (the same names on both sides).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adcache.budgets import AsyncBudgets, Budgets
from adcache.campaigns import AsyncCampaigns, Campaigns
from adcache.sessions import AsyncSessions, Sessions
from adcache.targeting import AsyncTargetingIndex, TargetingIndex

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache


class SyncFacades:
    sessions: Sessions
    campaigns: Campaigns
    budgets: Budgets
    targeting: TargetingIndex

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        self.sessions = Sessions(self)
        self.campaigns = Campaigns(self)
        self.budgets = Budgets(self)
        self.targeting = TargetingIndex(self)


class AsyncFacades:
    sessions: AsyncSessions
    campaigns: AsyncCampaigns
    budgets: AsyncBudgets
    targeting: AsyncTargetingIndex

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        self.sessions = AsyncSessions(self)
        self.campaigns = AsyncCampaigns(self)
        self.budgets = AsyncBudgets(self)
        self.targeting = AsyncTargetingIndex(self)
