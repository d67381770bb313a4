"""Prometheus exposition of adcache (`prometheus_client` custom collectors).

Names follow the redis_exporter conventions: an `adcache_` prefix, counters end in `_total`, base
units (bytes, seconds), labels for the node and for families of counters, never a user id.

Server figures are per node (label `node`; PromQL sums them), plus the cluster-wide hit ratio,
which cannot be summed from ratios. adcache's own counters are summed over the nodes by the client
(each node only knows what ran on it; they restart at zero when the library is reloaded, which
Prometheus' rate() treats as a counter reset).

Other parts of adcache add their families with `register_collector(factory)`: the factory gets the
`AdCache` and returns a collector (any object with `collect()` yielding metric families); every
registry built afterwards includes it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from adcache.client import AdCache

log = logging.getLogger("adcache.metrics")

PREFIX = "adcache"

# adcache counter families: a counter named <prefix><label value> becomes
# adcache_<metric>_total{<label>="<label value>"}. Longest prefix first (bids_lost_ before bids_).
COUNTER_FAMILIES: tuple[tuple[str, str, str, str], ...] = (
    ("bids_lost_", "bids_lost", "reason", "Bids lost, by loss reason."),
    ("bids_", "bids", "outcome", "Bids, by outcome."),
    ("budget_refused_", "budget_refused", "reason", "Budget charges refused, by reason."),
)


# The per-node figures of `NodeHealth`: attribute -> (family, metric name, help).
_NODE_FIGURES: dict[str, tuple[type[GaugeMetricFamily | CounterMetricFamily], str, str]] = {
    "used_memory": (GaugeMetricFamily, "memory_used_bytes", "Memory used by the node."),
    "maxmemory": (GaugeMetricFamily, "memory_max_bytes", "maxmemory of the node (0: no limit)."),
    "connected_clients": (GaugeMetricFamily, "connected_clients", "Clients connected to the node."),
    "ops_per_sec": (
        GaugeMetricFamily,
        "instantaneous_ops_per_sec",
        "Commands per second (server estimate).",
    ),
    "keyspace_hits": (CounterMetricFamily, "keyspace_hits", "Key lookups that found the key."),
    "keyspace_misses": (CounterMetricFamily, "keyspace_misses", "Key lookups that missed."),
    "evicted_keys": (CounterMetricFamily, "evicted_keys", "Keys evicted under maxmemory."),
    "expired_keys": (CounterMetricFamily, "expired_keys", "Keys removed by expiry."),
    "commands_processed": (CounterMetricFamily, "commands_processed", "Commands processed."),
}


class Collector(Protocol):
    def collect(self) -> Iterable[Metric]: ...


CollectorFactory = Callable[["AdCache"], Collector]
_EXTRA: list[CollectorFactory] = []
_EXTRA_LOCK = threading.Lock()


def register_collector(factory: CollectorFactory) -> CollectorFactory:
    """Add a collector to every registry `build_registry` makes from now on (usable as a
    decorator). Registering the same factory twice has no effect."""
    with _EXTRA_LOCK:
        if factory not in _EXTRA:
            _EXTRA.append(factory)
    return factory


def unregister_collector(factory: CollectorFactory) -> None:
    with _EXTRA_LOCK:
        if factory in _EXTRA:
            _EXTRA.remove(factory)


class ProcessCounters:
    """Counters kept in this process (client-side caches, say), ready to register:

        hits = ProcessCounters("cache_events", "Cache events, by cache and event.", ("cache", "event"))
        register_collector(lambda cache: hits)
        hits.incr("profiles", "hit")

    exposes `adcache_cache_events_total{cache="profiles",event="hit"}`. Thread-safe.
    """

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> None:
        self.name = f"{PREFIX}_{name.removeprefix(PREFIX + '_').removesuffix('_total')}"
        self.doc = doc
        self.labels = labels
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def incr(self, *label_values: str, n: float = 1) -> None:
        if len(label_values) != len(self.labels):
            raise ValueError(f"{self.name} takes labels {self.labels}")
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + n

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0)

    def collect(self) -> Iterator[Metric]:
        fam = CounterMetricFamily(self.name, self.doc, labels=list(self.labels))
        with self._lock:
            items = sorted(self._values.items())
        for labels, v in items:
            fam.add_metric(list(labels), v)
        yield fam


def _counter_metrics(totals: dict[str, int]) -> Iterator[Metric]:
    families: dict[str, CounterMetricFamily] = {}
    for name, value in totals.items():
        for prefix, metric, label, doc in COUNTER_FAMILIES:
            if name.startswith(prefix) and len(name) > len(prefix):
                fam = families.get(metric)
                if fam is None:
                    fam = families[metric] = CounterMetricFamily(
                        f"{PREFIX}_{metric}", doc, labels=[label]
                    )
                fam.add_metric([name[len(prefix) :]], value)
                break
        else:
            fam = CounterMetricFamily(
                f"{PREFIX}_{name}", f"adcache counter {name}, summed over the nodes."
            )
            fam.add_metric([], value)
            yield fam
    yield from families.values()


class AdCacheCollector:
    """Scrapes every node at collection time: INFO figures and `ac_monitor_counters`."""

    def __init__(self, cache: AdCache) -> None:
        self.cache = cache

    def describe(self) -> list[Metric]:
        # Nothing up front: registering must not scrape Redis.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            health = self.cache.monitor.health()
        except RedisError as e:
            log.warning("adcache metrics: health scrape failed: %s", e)
            return
        up = GaugeMetricFamily(
            f"{PREFIX}_node_up", "1 when the node answered INFO.", labels=["node", "role"]
        )
        figures = {
            a: kind(f"{PREFIX}_{n}", d, labels=["node"])
            for a, (kind, n, d) in _NODE_FIGURES.items()
        }
        calls = CounterMetricFamily(
            f"{PREFIX}_function_calls",
            "FCALL / FCALL_RO commands (INFO commandstats).",
            labels=["node", "cmd"],
        )
        secs = CounterMetricFamily(
            f"{PREFIX}_function_duration_seconds",
            "Time spent in FCALL / FCALL_RO (INFO commandstats).",
            labels=["node", "cmd"],
        )
        for n in health.nodes:
            up.add_metric([n.node, n.role], 1 if n.up else 0)
            if not n.up:
                continue
            for a, fam in figures.items():
                fam.add_metric([n.node], getattr(n, a))
            for cmd, st in sorted(n.functions.items()):
                calls.add_metric([n.node, cmd], st.calls)
                secs.add_metric([n.node, cmd], st.usec / 1e6)
        yield up
        yield from figures.values()
        yield calls
        yield secs
        ratio = GaugeMetricFamily(
            f"{PREFIX}_keyspace_hit_ratio",
            "keyspace hits / (hits + misses), summed over every node (NaN before any lookup).",
        )
        hr = health.hit_rate
        ratio.add_metric([], float("nan") if hr is None else hr)
        yield ratio
        try:
            counters_now = self.cache.monitor.counters()
        except RedisError as e:
            log.warning("adcache metrics: counters scrape failed: %s", e)
            return
        yield from _counter_metrics(counters_now.totals)
        missing = GaugeMetricFamily(
            f"{PREFIX}_counters_unavailable",
            "1 for a node whose adcache counters could not be read (library missing?).",
            labels=["node"],
        )
        for node in counters_now.errors:
            missing.add_metric([node], 1)
        yield missing


class StrategyCollector:
    """The caching strategies' per-cache counters of this process (`adcache.strategies`):
    `adcache_strategy_events_total{cache, event}` with event hit, miss, load, stale_served,
    flush, ..."""

    def collect(self) -> Iterator[Metric]:
        from adcache.strategies import all_metrics

        family = CounterMetricFamily(
            f"{PREFIX}_strategy_events",
            "Caching-strategy events of this process, by cache name and event.",
            labels=["cache", "event"],
        )
        for name, counts in sorted(all_metrics().items()):
            for event, value in sorted(counts.items()):
                family.add_metric([name, event], value)
        yield family


def build_registry(cache: AdCache, *, extra: Iterable[CollectorFactory] = ()) -> CollectorRegistry:
    """A fresh registry with adcache's collector, the strategies' counters, every registered
    collector and `extra`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AdCacheCollector(cache))
    registry.register(StrategyCollector())  # type: ignore[arg-type]
    with _EXTRA_LOCK:
        factories = [*_EXTRA, *extra]
    for factory in factories:
        registry.register(factory(cache))  # type: ignore[arg-type]
    return registry


def exposition(cache: AdCache) -> str:
    """The text a scrape would return, once (for `adcache metrics --once` and tests)."""
    return generate_latest(build_registry(cache)).decode()


def serve(
    cache: AdCache, port: int, addr: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> tuple[Any, threading.Thread]:
    """Serve /metrics over HTTP in a daemon thread; returns (server, thread): call
    server.shutdown() to stop. Port 0 picks a free port (server.server_port)."""
    server, thread = start_http_server(port, addr=addr, registry=registry or build_registry(cache))
    return server, thread
