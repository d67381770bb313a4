"""Which domain facades a client carries: `cache.sessions`, `cache.auctions`, ...

The same names and classes on the sync and the asyncio client. A domain adds one import, one
entry in the table and one annotation per client class.
"""

from __future__ import annotations

from typing import Any

from adcache._facade import Async, Sync
from adcache.auctions import Auctions
from adcache.budgets import Budgets
from adcache.caches import Caches
from adcache.campaigns import Campaigns
from adcache.caps import Caps
from adcache.decide import Decisions
from adcache.monitor import Monitor
from adcache.profiles import Profiles
from adcache.segments import Segments
from adcache.sessions import Sessions
from adcache.stats import Stats
from adcache.targeting import TargetingIndex

FACADES: dict[str, Any] = {
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
SYNC = ASYNC = FACADES  # one class per domain serves both clients


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
