"""Caching strategies over a source of truth: cache-aside / read-through, write-through,
write-around and write-back (the flusher is in `adcache.strategies.flusher`).

Reads: `get` answers from Redis when the value is fresh. When it is missing, one caller in the
whole system (the owner of the key's loader lock, taken in the same FCALL as the read) loads it
from the source and fills the cache; the others poll briefly and get that value, or get the stale
value while it is being refreshed. A fresh value is sometimes refreshed early (XFetch: the
closer to expiry and the slower the load, the likelier), so hot keys rarely expire at all.
Misses are cached as negative entries for a short TTL. Any write or invalidation of a key
deletes its lock, so a load that started before it can never put an old value back.
"""

from __future__ import annotations

import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

from adcache import caches as ops
from adcache._core import Call
from adcache._facade import Async, Facade, M, Plan, Sync, do, each, many, one, plan, sleep
from adcache.caches import Lookup, Space
from adcache.strategies.metrics import StrategyMetrics, metrics_for
from adcache.strategies.source import (
    AsyncSourceOfTruth,
    SourceOfTruth,
    ThreadedSource,
    decode,
    encode,
)

if TYPE_CHECKING:
    from adcache import aio
    from adcache.client import AdCache

log = logging.getLogger("adcache.strategies")

Loader = Callable[[str], Any]
AsyncLoader = Callable[[str], Awaitable[Any]]
TagsFor = Callable[[str, Any], Sequence[str]]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How one named cache behaves. Durations in seconds (fractions allowed).

    ttl: logical lifetime of a value, spread by +/- `jitter` (a fraction) so keys filled together
    do not expire together. stale_grace: how long past its TTL a value may still be served while
    one caller refreshes it (0: never serve stale). negative_ttl: lifetime of a "no such key"
    entry (0: do not cache misses). lock_ttl: the loader lock's lifetime (longer than any load).
    wait_timeout: how long a caller waits for another's load before loading itself, uncached.
    early_refresh: the XFetch beta (0: off; 1: the paper's default). shards: how many hash tags
    the cache spreads over (fixed for the life of the data; the write-back flusher must agree).
    """

    ttl: float = 300.0
    jitter: float = 0.1
    stale_grace: float = 30.0
    negative_ttl: float = 5.0
    lock_ttl: float = 5.0
    wait_timeout: float = 3.0
    early_refresh: float = 1.0
    shards: int = 16

    def __post_init__(self) -> None:
        if self.ttl <= 0 or self.lock_ttl <= 0:
            raise ValueError("ttl and lock_ttl must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if min(self.stale_grace, self.negative_ttl, self.wait_timeout, self.early_refresh) < 0:
            raise ValueError("stale_grace, negative_ttl, wait_timeout, early_refresh must be >= 0")

    def ttl_ms(self) -> int:
        spread = 1.0 + random.uniform(-self.jitter, self.jitter)
        return max(1, round(self.ttl * spread * 1000))

    @property
    def grace_ms(self) -> int:
        return round(self.stale_grace * 1000)

    @property
    def lock_ttl_ms(self) -> int:
        return max(1, round(self.lock_ttl * 1000))

    @property
    def negative_ttl_ms(self) -> int:
        return round(self.negative_ttl * 1000)


def _refresh_early(lk: Lookup, beta: float) -> bool:
    # XFetch (Vattani et al.): refresh when now - delta * beta * ln(U) >= expiry, U in (0, 1].
    if beta <= 0 or lk.load_ms <= 0:
        return False
    return -lk.load_ms * beta * math.log(1.0 - random.random()) >= lk.remaining_ms


class _Backoff:
    """Polling delays while another caller loads: 5 ms growing to 50 ms, never past the lock."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.delay = 0.005

    def next(self, lock_pttl_ms: int) -> float | None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            return None
        d = min(self.delay, left, max(lock_pttl_ms, 1) / 1000)
        self.delay = min(self.delay * 1.5, 0.05)
        return d


class StrategyCache(Facade[M]):
    """A named cache in front of a `SourceOfTruth`, on the sync or asyncio `AdCache`.

    Reads: `get` (read-through; pass `loader=` for cache-aside with your own loader), `get_many`.
    Writes: `write_through`, `write_around`, `write_back` and their `delete_*` twins.
    Invalidation: `invalidate(key)`, `invalidate_tag(tag)`. Counters: `metrics`.
    `tags_for(key, value)` names the tags of a value cached by a read (writes take `tags=`).
    On the asyncio client the methods return awaitables; a blocking `SourceOfTruth` (such as
    `SQLiteSource`) is run in threads there, an `AsyncSourceOfTruth` is awaited directly.
    """

    source: Any  # a SourceOfTruth; on the asyncio client an AsyncSourceOfTruth

    @overload
    def __init__(
        self: StrategyCache[Sync],
        cache: AdCache,
        name: str,
        source: SourceOfTruth,
        policy: CachePolicy | None = None,
        *,
        tags_for: TagsFor | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: StrategyCache[Async],
        cache: aio.AdCache,
        name: str,
        source: SourceOfTruth | AsyncSourceOfTruth,
        policy: CachePolicy | None = None,
        *,
        tags_for: TagsFor | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None: ...
    def __init__(
        self,
        cache: Any,
        name: str,
        source: Any,
        policy: CachePolicy | None = None,
        *,
        tags_for: TagsFor | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None:
        super().__init__(cache)
        self.policy = policy or CachePolicy()
        self.space = Space(name, self.policy.shards)
        self.name = name
        self.tags_for = tags_for
        self.metrics = metrics or metrics_for(name)
        self.source = source
        if getattr(cache, "is_async", False) and not inspect.iscoroutinefunction(source.load):
            self.source = ThreadedSource(source)

    def _tags(self, key: str, value: Any, tags: Sequence[str] | None) -> Sequence[str]:
        if tags is not None:
            return tags
        return self.tags_for(key, value) if self.tags_for is not None else ()

    def _served(self, first: Lookup, lk: Lookup) -> None:
        # One outcome per read: fresh at the first look, stale, or a miss (loaded or waited).
        if lk.status == "stale":
            self.metrics.incr("stale_served")
        elif first is lk and lk.status in ("hit", "neg"):
            self.metrics.incr("hit")
            if lk.status == "neg":
                self.metrics.incr("negative_hit")
        else:
            self.metrics.incr("miss")

    # ---- reads ----

    def _lookup(self, key: str, token: str, *, refresh: bool = False) -> Plan[Lookup]:
        lock_ttl_ms = self.policy.lock_ttl_ms
        get = ops.get_call(self.space, key, token, lock_ttl_ms=lock_ttl_ms, refresh=refresh)
        return (yield from one(get))

    @plan
    def get(self, key: str, loader: Loader | AsyncLoader | None = None) -> Plan[Any | None]:
        """The value of `key` (None when the source has none), from the cache when possible."""
        load = loader or self.source.load
        token = uuid.uuid4().hex
        p = self.policy
        first = lk = yield from self._lookup(key, token)
        backoff: _Backoff | None = None
        while True:
            if lk.status in ("hit", "neg", "stale"):
                self._served(first, lk)
                if lk.status == "neg":
                    return None
                if lk.status == "hit" and first is lk and _refresh_early(lk, p.early_refresh):
                    return (yield from self._refresh(key, token, lk, load))
                return decode(lk.payload)
            if lk.locked:
                self._served(first, lk)
                return (yield from self._load_fill(key, token, load, lk))
            backoff = backoff or _Backoff(p.wait_timeout)
            delay = backoff.next(lk.remaining_ms)
            if delay is None:
                # The loader is too slow or gone: answer from the source, leave the cache to it.
                log.warning(
                    "cache %s: waited %.2fs for the loader of %r", self.name, p.wait_timeout, key
                )
                self.metrics.incr("miss")
                self.metrics.incr("load")
                return (yield from do(load, key))
            yield from sleep(delay)
            lk = yield from self._lookup(key, token)

    def _refresh(self, key: str, token: str, lk: Lookup, load: Any) -> Plan[Any]:
        again = yield from self._lookup(key, token, refresh=True)
        if again.status != "reload":
            return decode(lk.payload)  # another caller refreshes it, or it changed: still fresh
        self.metrics.incr("early_refresh")
        return (yield from self._load_fill(key, token, load, again))

    def _load_fill(self, key: str, token: str, load: Any, lk: Lookup) -> Plan[Any]:
        t0 = time.monotonic()
        self.metrics.incr("load")
        try:
            value = yield from do(load, key)
        except Exception:
            self.metrics.incr("load_error")
            if lk.status == "reload" and lk.payload:
                log.exception(
                    "cache %s: load of %r failed, serving the stale value", self.name, key
                )
                if lk.remaining_ms <= 0:  # an early refresh's value is still fresh
                    self.metrics.incr("stale_served")
                return decode(lk.payload)
            # Let a waiting caller try at once.
            yield from one(ops.release_call(self.space, key, token))
            raise
        [fill] = self._fill_calls([key], token, {key: value}, t0)
        stored = yield from one(fill)
        if not stored and (value is not None or self.policy.negative_ttl_ms > 0):
            self.metrics.incr("fill_lost")
        return value

    @plan
    def get_many(self, keys: Sequence[str]) -> Plan[dict[str, Any]]:
        """The values of the keys that exist: one round per node for the lookups (one FCALL per
        shard), one `load_many` for the keys this caller must load, one round for the fills."""
        token = uuid.uuid4().hex
        keys = list(dict.fromkeys(keys))  # one lookup (and one lock) per distinct key
        batches = ops.get_many_calls(self.space, keys, token, lock_ttl_ms=self.policy.lock_ttl_ms)
        replies = yield from many([call for _, call in batches])
        out, to_load, waiting = self._partition(keys, batches, replies)
        if to_load:
            t0 = time.monotonic()
            self.metrics.incr("load", len(to_load))
            try:
                loaded = yield from do(self.source.load_many, to_load)
            except Exception:
                self.metrics.incr("load_error")
                yield from many([ops.release_call(self.space, k, token) for k in to_load])
                raise
            results = yield from many(self._fill_calls(to_load, token, loaded, t0))
            # As in `get`: a miss that is not cached was released, not lost.
            cached_miss = self.policy.negative_ttl_ms > 0
            lost = [k for k, r in zip(to_load, results, strict=True) if r is False]
            self.metrics.incr(
                "fill_lost", sum(1 for k in lost if cached_miss or loaded.get(k) is not None)
            )
            out.update(loaded)
        # Keys another caller loads: waited for (side by side on asyncio).
        values = yield from each([type(self).get.fn(self, k) for k in waiting])
        out.update({k: v for k, v in zip(waiting, values, strict=True) if v is not None})
        return out

    def _partition(
        self,
        keys: Sequence[str],
        batches: list[tuple[list[str], Call[list[Lookup]]]],
        replies: list[list[Lookup]],
    ) -> tuple[dict[str, Any], list[str], list[str]]:
        """Served values, keys this caller must load (it holds their lock), keys to wait for."""
        by_key = {
            k: lk
            for (ks, _), lks in zip(batches, replies, strict=True)
            for k, lk in zip(ks, lks, strict=True)
        }
        out: dict[str, Any] = {}
        to_load: list[str] = []
        waiting: list[str] = []
        for k in keys:
            lk = by_key[k]
            if lk.status == "wait":
                waiting.append(k)
                continue
            self._served(lk, lk)
            if lk.status in ("hit", "stale"):
                out[k] = decode(lk.payload)
            elif lk.locked:
                to_load.append(k)
        return out, to_load, waiting

    def _fill_calls(
        self, keys: Sequence[str], token: str, loaded: dict[str, Any], t0: float
    ) -> list[Call[Any]]:
        """Store what a load found (a negative entry for a key it did not, or nothing when
        misses are not cached: the lock is released)."""
        load_ms = min(round((time.monotonic() - t0) * 1000), MAX_LOAD_MS)
        p = self.policy
        calls: list[Call[Any]] = []
        for key in keys:
            value = loaded.get(key)
            if value is None and p.negative_ttl_ms <= 0:
                calls.append(ops.invalidate_call(self.space, key))
                continue
            payload = None if value is None else encode(value)
            calls.append(
                ops.fill_call(
                    self.space,
                    key,
                    token,
                    payload,
                    ttl_ms=p.negative_ttl_ms if value is None else p.ttl_ms(),
                    grace_ms=p.grace_ms,
                    load_ms=load_ms,
                    tags=() if value is None else self._tags(key, value, None),
                )
            )
        return calls

    # ---- invalidation ----

    @plan
    def invalidate(self, key: str) -> Plan[bool]:
        """Drop the cached value of `key` (and cancel any load of it in flight)."""
        return (yield from one(ops.invalidate_call(self.space, key)))

    @plan
    def invalidate_tag(self, tag: str) -> Plan[int]:
        """Drop every cached value carrying `tag`, on every shard; returns how many."""
        return sum((yield from many(ops.invalidate_tag_calls(self.space, tag))))

    def _invalidate_after_failure(self, key: str, cause: BaseException) -> Plan[None]:
        # The source has changed and the cache could not follow: the key must not stay cached.
        for attempt in range(3):
            try:
                yield from one(ops.invalidate_call(self.space, key))
                log.warning(
                    "cache %s: cache write of %r failed (%s); invalidated", self.name, key, cause
                )
                return
            except Exception:
                if attempt == 2:
                    log.exception("cache %s: %r could not be invalidated", self.name, key)
                    raise
                yield from sleep(0.05 * (attempt + 1))

    def _write_begun(
        self, key: str, value: Any, ttl_ms: int, tags: Sequence[str] | None, save: Plan[Any]
    ) -> Plan[None]:
        """Register as the key's writer, write the source (`save`), then the cache (None: the
        absence); a failed cache write invalidates the key."""
        token = uuid.uuid4().hex
        p = self.policy
        yield from one(ops.write_begin_call(self.space, key, token, ttl_ms=p.lock_ttl_ms))
        yield from save
        try:
            payload, grace_ms = (None, 0) if value is None else (encode(value), p.grace_ms)
            tags = () if value is None else self._tags(key, value, tags)  # an absence: untagged
            yield from one(
                ops.set_call(
                    self.space, key, token, payload, ttl_ms=ttl_ms, grace_ms=grace_ms, tags=tags
                )
            )
        except Exception as e:
            yield from self._invalidate_after_failure(key, e)

    # ---- writes ----

    @plan
    def write_through(
        self, key: str, value: Any, *, tags: Sequence[str] | None = None
    ) -> Plan[None]:
        """Write the source, then the cache. If the source refuses, the cache keeps the value it
        had (still the database's); if the cache write fails, the key is invalidated (the error
        raised only if that fails too). Writes of one key that overlap drop it instead of
        storing (they may finish in another order than the database serialized them)."""
        save = do(self.source.save, key, value)
        yield from self._write_begun(key, value, self.policy.ttl_ms(), tags, save)

    @plan
    def delete_through(self, key: str) -> Plan[None]:
        """Delete in the source, then cache the absence (a negative entry) or drop the key."""
        p = self.policy
        delete = do(self.source.delete, key)
        if p.negative_ttl_ms <= 0:
            yield from self._around(key, delete)
        else:
            yield from self._write_begun(key, None, p.negative_ttl_ms, (), delete)

    @plan
    def write_around(self, key: str, value: Any) -> Plan[None]:
        """Write the source, then drop the cached value; the next read loads the new one."""
        yield from self._around(key, do(self.source.save, key, value))

    @plan
    def delete_around(self, key: str) -> Plan[None]:
        """Delete in the source, then drop the cached value."""
        yield from self._around(key, do(self.source.delete, key))

    def _around(self, key: str, save: Plan[Any]) -> Plan[None]:
        """The source write (`save`), then the key's invalidation (retried if it fails)."""
        yield from save
        try:
            yield from one(ops.invalidate_call(self.space, key))
        except Exception as e:
            yield from self._invalidate_after_failure(key, e)

    @plan
    def write_back(self, key: str, value: Any, *, tags: Sequence[str] | None = None) -> Plan[str]:
        """Write the cache and append the change to the shard's stream in one FCALL; a `Flusher`
        writes it to the source later. Returns the change's stream id."""
        if value is None:
            raise ValueError("None means 'no such key'; use delete_back()")
        p = self.policy
        payload, tags = encode(value), self._tags(key, value, tags)
        wb = ops.wb_write_call(
            self.space, key, payload, ttl_ms=p.ttl_ms(), grace_ms=p.grace_ms, tags=tags
        )
        return (yield from one(wb))

    @plan
    def delete_back(self, key: str) -> Plan[str]:
        """Cache the absence and append a delete record; the flusher deletes it in the source."""
        p = self.policy
        ttl_ms = max(p.negative_ttl_ms, p.ttl_ms())
        return (yield from one(ops.wb_write_call(self.space, key, None, ttl_ms=ttl_ms, grace_ms=0)))


MAX_LOAD_MS = 10 * 60 * 1000  # the Lua bound of load_ms (C.MAX_LOCK_MS)

AsyncStrategyCache = StrategyCache  # the same class: on an asyncio client it returns awaitables
