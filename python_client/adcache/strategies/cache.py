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

import asyncio
import inspect
import logging
import math
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adcache import caches as ops
from adcache._core import Call
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


class _Base:
    def __init__(
        self,
        name: str,
        policy: CachePolicy | None,
        tags_for: TagsFor | None,
        metrics: StrategyMetrics | None,
    ) -> None:
        self.policy = policy or CachePolicy()
        self.space = Space(name, self.policy.shards)
        self.name = name
        self.tags_for = tags_for
        self.metrics = metrics or metrics_for(name)

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

    def _lookup_calls(
        self, keys: Sequence[str], token: str
    ) -> list[tuple[list[str], Call[list[Lookup]]]]:
        return ops.get_many_calls(self.space, keys, token, lock_ttl_ms=self.policy.lock_ttl_ms)

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
        load_ms = min(round((time.monotonic() - t0) * 1000), ops_max_load_ms())
        return [self._fill_call(k, token, loaded.get(k), load_ms) for k in keys]

    def _fill_call(self, key: str, token: str, value: Any, load_ms: int) -> Call[Any]:
        p = self.policy
        if value is None and p.negative_ttl_ms <= 0:
            return ops.invalidate_call(self.space, key)
        return ops.fill_call(
            self.space,
            key,
            token,
            None if value is None else encode(value),
            ttl_ms=p.negative_ttl_ms if value is None else p.ttl_ms(),
            grace_ms=p.grace_ms,
            load_ms=load_ms,
            tags=() if value is None else self._tags(key, value, None),
        )


class StrategyCache(_Base):
    """A named cache in front of a `SourceOfTruth`, on a synchronous `AdCache`.

    Reads: `get` (read-through; pass `loader=` for cache-aside with your own loader), `get_many`.
    Writes: `write_through`, `write_around`, `write_back` and their `delete_*` twins.
    Invalidation: `invalidate(key)`, `invalidate_tag(tag)`. Counters: `metrics`.
    `tags_for(key, value)` names the tags of a value cached by a read (writes take `tags=`).
    """

    def __init__(
        self,
        cache: AdCache,
        name: str,
        source: SourceOfTruth,
        policy: CachePolicy | None = None,
        *,
        tags_for: TagsFor | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None:
        super().__init__(name, policy, tags_for, metrics)
        self._c = cache
        self.source = source

    # ---- reads ----

    def get(self, key: str, loader: Loader | None = None) -> Any | None:
        """The value of `key` (None when the source has none), from the cache when possible."""
        load = loader or self.source.load
        token = uuid.uuid4().hex
        p = self.policy
        first = lk = self._c.caches.get(self.space, key, token, lock_ttl_ms=p.lock_ttl_ms)
        backoff: _Backoff | None = None
        while True:
            if lk.status in ("hit", "neg", "stale"):
                self._served(first, lk)
                if lk.status == "neg":
                    return None
                if lk.status == "hit" and first is lk and _refresh_early(lk, p.early_refresh):
                    return self._refresh(key, token, lk, load)
                return decode(lk.payload)
            if lk.locked:
                self._served(first, lk)
                return self._load_fill(key, token, load, lk)
            backoff = backoff or _Backoff(p.wait_timeout)
            delay = backoff.next(lk.remaining_ms)
            if delay is None:
                # The loader is too slow or gone: answer from the source, leave the cache to it.
                log.warning(
                    "cache %s: waited %.2fs for the loader of %r", self.name, p.wait_timeout, key
                )
                self.metrics.incr("miss")
                self.metrics.incr("load")
                return load(key)
            time.sleep(delay)
            lk = self._c.caches.get(self.space, key, token, lock_ttl_ms=p.lock_ttl_ms)

    def _refresh(self, key: str, token: str, lk: Lookup, load: Loader) -> Any:
        again = self._c.caches.get(
            self.space, key, token, lock_ttl_ms=self.policy.lock_ttl_ms, refresh=True
        )
        if again.status != "reload":
            return decode(lk.payload)  # another caller refreshes it, or it changed: still fresh
        self.metrics.incr("early_refresh")
        return self._load_fill(key, token, load, again)

    def _load_fill(self, key: str, token: str, load: Loader, lk: Lookup) -> Any:
        t0 = time.monotonic()
        self.metrics.incr("load")
        try:
            value = load(key)
        except Exception:
            self.metrics.incr("load_error")
            if lk.status == "reload" and lk.payload:
                log.exception(
                    "cache %s: load of %r failed, serving the stale value", self.name, key
                )
                if lk.remaining_ms <= 0:  # an early refresh's value is still fresh
                    self.metrics.incr("stale_served")
                return decode(lk.payload)
            self._c.caches.release(self.space, key, token)  # let a waiting caller try at once
            raise
        load_ms = round((time.monotonic() - t0) * 1000)
        self._fill(key, token, value, load_ms)
        return value

    def _fill(self, key: str, token: str, value: Any, load_ms: int) -> None:
        p = self.policy
        if value is None and p.negative_ttl_ms <= 0:
            self._c.caches.invalidate(self.space, key)  # nothing to cache; releases the lock
            return
        ttl = p.negative_ttl_ms if value is None else p.ttl_ms()
        stored = self._c.caches.fill(
            self.space,
            key,
            token,
            None if value is None else encode(value),
            ttl_ms=ttl,
            grace_ms=p.grace_ms,
            load_ms=min(load_ms, ops_max_load_ms()),
            tags=() if value is None else self._tags(key, value, None),
        )
        if not stored:
            self.metrics.incr("fill_lost")

    def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        """The values of the keys that exist: one round per node for the lookups (one FCALL per
        shard), one `load_many` for the keys this caller must load, one round for the fills."""
        token = uuid.uuid4().hex
        keys = list(dict.fromkeys(keys))  # one lookup (and one lock) per distinct key
        batches = self._lookup_calls(keys, token)
        replies = self._c.run_many([call for _, call in batches])
        out, to_load, waiting = self._partition(keys, batches, replies)
        if to_load:
            t0 = time.monotonic()
            self.metrics.incr("load", len(to_load))
            try:
                loaded = self.source.load_many(to_load)
            except Exception:
                self.metrics.incr("load_error")
                self._c.run_many([ops.release_call(self.space, k, token) for k in to_load])
                raise
            fills = self._fill_calls(to_load, token, loaded, t0)
            results = self._c.run_many(fills)
            self.metrics.incr("fill_lost", sum(1 for r in results if r is False))
            out.update(loaded)
        for k in waiting:
            v = self.get(k)
            if v is not None:
                out[k] = v
        return out

    # ---- invalidation ----

    def invalidate(self, key: str) -> bool:
        """Drop the cached value of `key` (and cancel any load of it in flight)."""
        return self._c.caches.invalidate(self.space, key)

    def invalidate_tag(self, tag: str) -> int:
        """Drop every cached value carrying `tag`, on every shard; returns how many."""
        return self._c.caches.invalidate_tag(self.space, tag)

    def _invalidate_after_failure(self, key: str, cause: BaseException) -> None:
        # The source has changed and the cache could not follow: the key must not stay cached.
        for attempt in range(3):
            try:
                self._c.caches.invalidate(self.space, key)
                log.warning(
                    "cache %s: cache write of %r failed (%s); invalidated", self.name, key, cause
                )
                return
            except Exception:
                if attempt == 2:
                    log.exception("cache %s: %r could not be invalidated", self.name, key)
                    raise
                time.sleep(0.05 * (attempt + 1))

    # ---- writes ----

    def write_through(self, key: str, value: Any, *, tags: Sequence[str] | None = None) -> None:
        """Write the source, then the cache. If the source refuses, the cache keeps the value it
        had (still the database's); if the cache write fails, the key is invalidated (the error
        raised only if that fails too). Writes of one key that overlap drop it instead of
        storing (they may finish in another order than the database serialized them)."""
        token = uuid.uuid4().hex
        p = self.policy
        self._c.caches.write_begin(self.space, key, token, ttl_ms=p.lock_ttl_ms)
        self.source.save(key, value)
        try:
            self._c.caches.set(
                self.space,
                key,
                token,
                encode(value),
                ttl_ms=p.ttl_ms(),
                grace_ms=p.grace_ms,
                tags=self._tags(key, value, tags),
            )
        except Exception as e:
            self._invalidate_after_failure(key, e)

    def delete_through(self, key: str) -> None:
        """Delete in the source, then cache the absence (a negative entry) or drop the key."""
        p = self.policy
        if p.negative_ttl_ms <= 0:
            self.source.delete(key)
            self._invalidate_now(key)
            return
        token = uuid.uuid4().hex
        self._c.caches.write_begin(self.space, key, token, ttl_ms=p.lock_ttl_ms)
        self.source.delete(key)
        try:
            self._c.caches.set(self.space, key, token, None, ttl_ms=p.negative_ttl_ms, grace_ms=0)
        except Exception as e:
            self._invalidate_after_failure(key, e)

    def write_around(self, key: str, value: Any) -> None:
        """Write the source, then drop the cached value; the next read loads the new one."""
        self.source.save(key, value)
        self._invalidate_now(key)

    def delete_around(self, key: str) -> None:
        self.source.delete(key)
        self._invalidate_now(key)

    def _invalidate_now(self, key: str) -> None:
        try:
            self._c.caches.invalidate(self.space, key)
        except Exception as e:
            self._invalidate_after_failure(key, e)

    def write_back(self, key: str, value: Any, *, tags: Sequence[str] | None = None) -> str:
        """Write the cache and append the change to the shard's stream in one FCALL; a `Flusher`
        writes it to the source later. Returns the change's stream id."""
        if value is None:
            raise ValueError("None means 'no such key'; use delete_back()")
        return self._c.caches.wb_write(
            self.space,
            key,
            encode(value),
            ttl_ms=self.policy.ttl_ms(),
            grace_ms=self.policy.grace_ms,
            tags=self._tags(key, value, tags),
        )

    def delete_back(self, key: str) -> str:
        """Cache the absence and append a delete record; the flusher deletes it in the source."""
        p = self.policy
        return self._c.caches.wb_write(
            self.space, key, None, ttl_ms=max(p.negative_ttl_ms, p.ttl_ms()), grace_ms=0
        )


def ops_max_load_ms() -> int:
    return 10 * 60 * 1000  # the Lua bound of load_ms (C.MAX_LOCK_MS)


class AsyncStrategyCache(_Base):
    """Asyncio twin of `StrategyCache` (same method names). A blocking `SourceOfTruth` (such as
    `SQLiteSource`) is run in threads; an `AsyncSourceOfTruth` is awaited directly."""

    def __init__(
        self,
        cache: aio.AdCache,
        name: str,
        source: SourceOfTruth | AsyncSourceOfTruth,
        policy: CachePolicy | None = None,
        *,
        tags_for: TagsFor | None = None,
        metrics: StrategyMetrics | None = None,
    ) -> None:
        super().__init__(name, policy, tags_for, metrics)
        self._c = cache
        self.source: AsyncSourceOfTruth
        if inspect.iscoroutinefunction(source.load):
            self.source = source  # type: ignore[assignment]
        else:
            self.source = ThreadedSource(source)  # type: ignore[arg-type]

    async def get(self, key: str, loader: AsyncLoader | None = None) -> Any | None:
        load = loader or self.source.load
        token = uuid.uuid4().hex
        p = self.policy
        first = lk = await self._c.caches.get(self.space, key, token, lock_ttl_ms=p.lock_ttl_ms)
        backoff: _Backoff | None = None
        while True:
            if lk.status in ("hit", "neg", "stale"):
                self._served(first, lk)
                if lk.status == "neg":
                    return None
                if lk.status == "hit" and first is lk and _refresh_early(lk, p.early_refresh):
                    return await self._refresh(key, token, lk, load)
                return decode(lk.payload)
            if lk.locked:
                self._served(first, lk)
                return await self._load_fill(key, token, load, lk)
            backoff = backoff or _Backoff(p.wait_timeout)
            delay = backoff.next(lk.remaining_ms)
            if delay is None:
                log.warning(
                    "cache %s: waited %.2fs for the loader of %r", self.name, p.wait_timeout, key
                )
                self.metrics.incr("miss")
                self.metrics.incr("load")
                return await load(key)
            await asyncio.sleep(delay)
            lk = await self._c.caches.get(self.space, key, token, lock_ttl_ms=p.lock_ttl_ms)

    async def _refresh(self, key: str, token: str, lk: Lookup, load: AsyncLoader) -> Any:
        again = await self._c.caches.get(
            self.space, key, token, lock_ttl_ms=self.policy.lock_ttl_ms, refresh=True
        )
        if again.status != "reload":
            return decode(lk.payload)
        self.metrics.incr("early_refresh")
        return await self._load_fill(key, token, load, again)

    async def _load_fill(self, key: str, token: str, load: AsyncLoader, lk: Lookup) -> Any:
        t0 = time.monotonic()
        self.metrics.incr("load")
        try:
            value = await load(key)
        except Exception:
            self.metrics.incr("load_error")
            if lk.status == "reload" and lk.payload:
                log.exception(
                    "cache %s: load of %r failed, serving the stale value", self.name, key
                )
                if lk.remaining_ms <= 0:
                    self.metrics.incr("stale_served")
                return decode(lk.payload)
            await self._c.caches.release(self.space, key, token)
            raise
        load_ms = min(round((time.monotonic() - t0) * 1000), ops_max_load_ms())
        p = self.policy
        if value is None and p.negative_ttl_ms <= 0:
            await self._c.caches.invalidate(self.space, key)
            return None
        stored = await self._c.caches.fill(
            self.space,
            key,
            token,
            None if value is None else encode(value),
            ttl_ms=p.negative_ttl_ms if value is None else p.ttl_ms(),
            grace_ms=p.grace_ms,
            load_ms=load_ms,
            tags=() if value is None else self._tags(key, value, None),
        )
        if not stored:
            self.metrics.incr("fill_lost")
        return value

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        token = uuid.uuid4().hex
        keys = list(dict.fromkeys(keys))
        batches = self._lookup_calls(keys, token)
        replies = await self._c.run_many([call for _, call in batches])
        out, to_load, waiting = self._partition(keys, batches, replies)
        if to_load:
            t0 = time.monotonic()
            self.metrics.incr("load", len(to_load))
            try:
                loaded = await self.source.load_many(to_load)
            except Exception:
                self.metrics.incr("load_error")
                await self._c.run_many([ops.release_call(self.space, k, token) for k in to_load])
                raise
            results = await self._c.run_many(self._fill_calls(to_load, token, loaded, t0))
            self.metrics.incr("fill_lost", sum(1 for r in results if r is False))
            out.update(loaded)
        values = await asyncio.gather(*(self.get(k) for k in waiting))
        out.update({k: v for k, v in zip(waiting, values, strict=True) if v is not None})
        return out

    async def invalidate(self, key: str) -> bool:
        return await self._c.caches.invalidate(self.space, key)

    async def invalidate_tag(self, tag: str) -> int:
        return await self._c.caches.invalidate_tag(self.space, tag)

    async def _invalidate_after_failure(self, key: str, cause: BaseException) -> None:
        for attempt in range(3):
            try:
                await self._c.caches.invalidate(self.space, key)
                log.warning(
                    "cache %s: cache write of %r failed (%s); invalidated", self.name, key, cause
                )
                return
            except Exception:
                if attempt == 2:
                    log.exception("cache %s: %r could not be invalidated", self.name, key)
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    async def write_through(
        self, key: str, value: Any, *, tags: Sequence[str] | None = None
    ) -> None:
        """Write the source, then the cache. If the source refuses, the cache keeps the value it
        had (still the database's); if the cache write fails, the key is invalidated (the error
        raised only if that fails too). Writes of one key that overlap drop it instead of
        storing (they may finish in another order than the database serialized them)."""
        token = uuid.uuid4().hex
        p = self.policy
        await self._c.caches.write_begin(self.space, key, token, ttl_ms=p.lock_ttl_ms)
        await self.source.save(key, value)
        try:
            await self._c.caches.set(
                self.space,
                key,
                token,
                encode(value),
                ttl_ms=p.ttl_ms(),
                grace_ms=p.grace_ms,
                tags=self._tags(key, value, tags),
            )
        except Exception as e:
            await self._invalidate_after_failure(key, e)

    async def delete_through(self, key: str) -> None:
        """Delete in the source, then cache the absence (a negative entry) or drop the key."""
        p = self.policy
        if p.negative_ttl_ms <= 0:
            await self.source.delete(key)
            await self._invalidate_now(key)
            return
        token = uuid.uuid4().hex
        await self._c.caches.write_begin(self.space, key, token, ttl_ms=p.lock_ttl_ms)
        await self.source.delete(key)
        try:
            await self._c.caches.set(
                self.space, key, token, None, ttl_ms=p.negative_ttl_ms, grace_ms=0
            )
        except Exception as e:
            await self._invalidate_after_failure(key, e)

    async def write_around(self, key: str, value: Any) -> None:
        await self.source.save(key, value)
        await self._invalidate_now(key)

    async def delete_around(self, key: str) -> None:
        await self.source.delete(key)
        await self._invalidate_now(key)

    async def _invalidate_now(self, key: str) -> None:
        try:
            await self._c.caches.invalidate(self.space, key)
        except Exception as e:
            await self._invalidate_after_failure(key, e)

    async def write_back(self, key: str, value: Any, *, tags: Sequence[str] | None = None) -> str:
        if value is None:
            raise ValueError("None means 'no such key'; use delete_back()")
        return await self._c.caches.wb_write(
            self.space,
            key,
            encode(value),
            ttl_ms=self.policy.ttl_ms(),
            grace_ms=self.policy.grace_ms,
            tags=self._tags(key, value, tags),
        )

    async def delete_back(self, key: str) -> str:
        p = self.policy
        return await self._c.caches.wb_write(
            self.space, key, None, ttl_ms=max(p.negative_ttl_ms, p.ttl_ms()), grace_ms=0
        )
