"""Per-cache-name counters of the caching strategies.

One `StrategyMetrics` per cache name and process, shared by every strategy object and flusher of
that name; the monitoring exporter reads `all_metrics()` (or each object's `snapshot()`).
"""

from __future__ import annotations

import threading

COUNTERS = (
    "hit",  # served fresh from the cache at the first look (negative entries included)
    "miss",  # not served fresh at the first look: loaded, or waited for another loader
    "load",  # keys read from the source of truth by this process
    "stale_served",  # a stale value served while another caller refreshed it (or the load failed)
    "flush",  # write-back changes committed to the source of truth by a flusher
    "negative_hit",  # hits on a negative entry (the source has no such key)
    "early_refresh",  # probabilistic refreshes before expiry
    "fill_lost",  # loads not cached because a write or invalidation came first
    "load_error",  # loads that raised
)


class StrategyMetrics:
    """Thread-safe counters of one cache name (see `COUNTERS`)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def incr(self, counter: str, n: int = 1) -> None:
        with self._lock:
            self._values[counter] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

    def hit_rate(self) -> float:
        """hit / (hit + miss + stale_served); 0.0 before the first read."""
        s = self.snapshot()
        reads = s["hit"] + s["miss"] + s["stale_served"]
        return s["hit"] / reads if reads else 0.0

    def reset(self) -> None:
        with self._lock:
            self._values = dict.fromkeys(COUNTERS, 0)


_registry: dict[str, StrategyMetrics] = {}
_registry_lock = threading.Lock()


def metrics_for(name: str) -> StrategyMetrics:
    """The counters of cache `name` in this process (created on first use)."""
    with _registry_lock:
        m = _registry.get(name)
        if m is None:
            m = _registry[name] = StrategyMetrics(name)
        return m


def all_metrics() -> dict[str, dict[str, int]]:
    """Snapshot of every cache name's counters, for the metrics exporter."""
    with _registry_lock:
        items = list(_registry.values())
    return {m.name: m.snapshot() for m in items}
