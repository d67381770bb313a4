"""Caching strategies over a real source of truth (see docs/strategies.md).

* `StrategyCache` / `AsyncStrategyCache`: cache-aside and read-through reads (`get`, `get_many`)
  with TTL + jitter, stampede protection, early refresh and negative caching; invalidation by key
  and by tag; write-through, write-around and write-back writes.
* `Flusher`: writes the write-back change records to the source, exactly once per change.
* `SourceOfTruth` / `ChangeSink`: what a database implements; `SQLiteSource` is the default.
* `StrategyMetrics`: hit, miss, load, stale-served and flush counters per cache name.
"""

from adcache.strategies.cache import AsyncStrategyCache, CachePolicy, StrategyCache
from adcache.strategies.flusher import DEFAULT_GROUP, AsyncFlusher, Flusher
from adcache.strategies.metrics import COUNTERS, StrategyMetrics, all_metrics, metrics_for
from adcache.strategies.source import (
    ApplyResult,
    AsyncSourceOfTruth,
    Change,
    ChangeSink,
    SourceOfTruth,
    SQLiteSource,
    ThreadedSource,
)

__all__ = [
    "COUNTERS",
    "DEFAULT_GROUP",
    "ApplyResult",
    "AsyncFlusher",
    "AsyncSourceOfTruth",
    "AsyncStrategyCache",
    "CachePolicy",
    "Change",
    "ChangeSink",
    "Flusher",
    "SQLiteSource",
    "SourceOfTruth",
    "StrategyCache",
    "StrategyMetrics",
    "ThreadedSource",
    "all_metrics",
    "metrics_for",
]
