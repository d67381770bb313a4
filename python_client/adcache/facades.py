"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

The same names on the sync and the asyncio client. A domain adds one import, one annotation per
class and one entry per table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adcache._facade import Async, Sync
from adcache.auctions import AsyncAuctions, Auctions
from adcache.budgets import AsyncBudgets, Budgets
from adcache.caches import AsyncCaches, Caches
from adcache.campaigns import AsyncCampaigns, Campaigns
from adcache.caps import AsyncCaps, Caps
from adcache.decide import Decisions
from adcache.monitor import Monitor
from adcache.profiles import AsyncProfiles, Profiles
from adcache.segments import AsyncSegments, Segments
from adcache.sessions import AsyncSessions, Sessions
from adcache.stats import AsyncStats, Stats
from adcache.targeting import AsyncTargetingIndex, TargetingIndex

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache

SYNC: dict[str, Any] = {
    "sessions": Sessions,
    "profiles": Profiles,
    "segments": Segments,
    "auctions": Auctions,
    "caps": Caps,
    "campaigns": Campaigns,
    "budgets": Budgets,
    "targeting": TargetingIndex,
    "stats": Stats,
    "monitor": Monitor,
    "caches": Caches,
    "decide": Decisions,
}
ASYNC: dict[str, Any] = {
    "sessions": AsyncSessions,
    "profiles": AsyncProfiles,
    "segments": AsyncSegments,
    "auctions": AsyncAuctions,
    "caps": AsyncCaps,
    "campaigns": AsyncCampaigns,
    "budgets": AsyncBudgets,
    "targeting": AsyncTargetingIndex,
    "stats": AsyncStats,
    "monitor": Monitor,
    "caches": AsyncCaches,
    "decide": Decisions,
}


class SyncFacades:
    sessions: Sessions[Sync]
    profiles: Profiles[Sync]
    segments: Segments[Sync]
    auctions: Auctions[Sync]
    caps: Caps[Sync]
    campaigns: Campaigns[Sync]
    budgets: Budgets[Sync]
    targeting: TargetingIndex[Sync]
    stats: Stats[Sync]
    monitor: Monitor[Sync]
    caches: Caches[Sync]
    decide: Decisions[Sync]

    def _attach_facades(self: AdCache) -> None:  # type: ignore[misc]
        for name, cls in SYNC.items():
            setattr(self, name, cls(self))


class AsyncFacades:
    sessions: Sessions[Async]
    profiles: Profiles[Async]
    segments: Segments[Async]
    auctions: Auctions[Async]
    caps: Caps[Async]
    campaigns: Campaigns[Async]
    budgets: Budgets[Async]
    targeting: TargetingIndex[Async]
    stats: Stats[Async]
    monitor: Monitor[Async]
    caches: Caches[Async]
    decide: Decisions[Async]

    def _attach_facades(self: aio.AdCache) -> None:  # type: ignore[misc]
        for name, cls in ASYNC.items():
            setattr(self, name, cls(self))
