"""Durable mode: a write is confirmed by a replica in the same round trip, or reported."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis.asyncio as aredis

from adcache import AdCache, DurabilityError, aio
from adcache.sessions import delete_call, get_call
from adcache_loader.deploy import deploy
from adcache_loader.servers import RedisServer


@pytest.fixture
def pair(redis_binary: str) -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer(redis_binary).start()
    replica = RedisServer(redis_binary).start()
    try:
        replica.client().replicaof(primary.host, primary.port)
        deadline = time.monotonic() + 10
        while primary.client().info("replication").get("connected_slaves", 0) < 1:
            assert time.monotonic() < deadline, "replica did not connect"
            time.sleep(0.05)
        deploy(primary.url)
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


def test_durable_write_waits_for_the_replica(
    pair: tuple[RedisServer, RedisServer], uid: str
) -> None:
    primary, replica = pair
    cache = AdCache(primary.client()).durable(replicas=1, timeout_ms=2000)
    cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    # Acknowledged by the replica: it is there at once, without waiting.
    assert replica.client().exists(f"ad:{{s:{uid}}}:sess") == 1
    assert cache.sessions.get_many([uid])[0] is not None


def test_unconfirmed_write_is_reported(pair: tuple[RedisServer, RedisServer], uid: str) -> None:
    primary, replica = pair
    cache = AdCache(primary.client()).durable(replicas=1, timeout_ms=100)
    admin = replica.client()
    admin.execute_command("CLIENT", "PAUSE", "1500", "ALL")  # the replica stops acknowledging
    try:
        with pytest.raises(DurabilityError, match="0 of 1"):
            cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60, index=False)
        results = cache.run_many([get_call(uid), delete_call(uid)], raise_on_error=False)
        assert results[0] is not None and isinstance(results[1], DurabilityError)
    finally:
        time.sleep(1.6)
    # Reads never wait: a non-durable view of the same client is unaffected.
    assert AdCache(primary.client()).sessions.get(uid) is None


async def test_async_durable(pair: tuple[RedisServer, RedisServer], uid: str) -> None:
    primary, replica = pair
    cache = aio.AdCache(aredis.Redis(port=primary.port)).durable(replicas=1, timeout_ms=2000)
    try:
        await cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
        assert replica.client().exists(f"ad:{{s:{uid}}}:sess") == 1
    finally:
        await cache.aclose()
