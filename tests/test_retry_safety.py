"""Retries never repeat a write that may have run: a connection lost after an FCALL was sent is
raised for writes (the caller knows whether the write is idempotent) and retried for reads."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aredis

from adcache import AdCache, aio
from adcache_loader.deploy import deploy
from adcache_loader.servers import RedisServer, Standalone


@pytest.fixture
def aof_server(redis_binary: str) -> Iterator[RedisServer]:
    s = RedisServer(
        redis_binary, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    ).start()
    deploy(s.url)
    yield s
    s.stop()


def _crash_while_paused(server: RedisServer, delay: float = 0.3) -> threading.Thread:
    """Pause the server (the next command waits unanswered), then crash and restart it."""
    server.client().execute_command("CLIENT", "PAUSE", "5000", "ALL")

    def crash() -> None:
        time.sleep(delay)
        server.kill()
        server.start()

    t = threading.Thread(target=crash)
    t.start()
    return t


def test_a_write_lost_in_flight_is_not_sent_again(aof_server: RedisServer, uid: str) -> None:
    cache = AdCache(redis.Redis(port=aof_server.port))
    cache.sessions.get(uid)  # connected and library checked before the crash
    t = _crash_while_paused(aof_server)
    with pytest.raises(redis.ConnectionError):
        cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60, index=False)
    t.join()
    # Had the client retried after the restart, the session would exist now.
    assert cache.sessions.get(uid) is None


def test_a_read_lost_in_flight_is_retried(aof_server: RedisServer, uid: str) -> None:
    cache = AdCache(redis.Redis(port=aof_server.port))
    cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60, index=False)
    t = _crash_while_paused(aof_server)
    got = cache.sessions.get(uid)  # waits, loses its connection, retries on the restarted server
    t.join()
    assert got is not None and got.user_id == "u"


def test_run_many_returns_the_error_for_writes_and_retries_reads(
    aof_server: RedisServer, uid: str
) -> None:
    from adcache.sessions import create_call, get_call

    cache = AdCache(redis.Redis(port=aof_server.port))
    cache.sessions.create(f"{uid}-a", "u", idle_ttl=60, max_lifetime=60, index=False)
    t = _crash_while_paused(aof_server)
    res = cache.run_many(
        [get_call(f"{uid}-a"), create_call(f"{uid}-b", "u", idle_ttl=60, max_lifetime=60)],
        raise_on_error=False,
    )
    t.join()
    assert res[0] is not None and res[0].user_id == "u"
    assert isinstance(res[1], redis.ConnectionError)
    assert cache.sessions.get(f"{uid}-b") is None


async def test_async_write_lost_in_flight_is_not_sent_again(
    aof_server: RedisServer, uid: str
) -> None:
    cache = aio.AdCache(aredis.Redis(port=aof_server.port))
    try:
        await cache.sessions.get(uid)
        t = _crash_while_paused(aof_server)
        with pytest.raises(redis.ConnectionError):
            await cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60, index=False)
        t.join()
        assert await cache.sessions.get(uid) is None
        t = _crash_while_paused(aof_server)
        assert await cache.sessions.get(uid) is None  # a read is retried
        t.join()
    finally:
        await cache.aclose()


def test_a_batch_cut_after_some_replies_keeps_the_replies_it_read(
    lib_standalone: Standalone, uid: str
) -> None:
    """The server answers two creates, then closes the connection (QUIT) with a third create
    written after it: the two replies read are results, the unanswered write is the error (it
    may have run), and a read written after the cut is sent again."""
    from adcache._core import REDO, AfterSend, Call
    from adcache._redispy import pack
    from adcache.client import _Batch
    from adcache.sessions import Session, create_call, get_call

    cache = AdCache(lib_standalone.client())
    calls: list[Call[object]] = [
        create_call(f"{uid}-{x}", "u", idle_ttl=60, max_lifetime=60) for x in "ab"
    ]
    calls += [create_call(f"{uid}-c", "u", idle_ttl=60, max_lifetime=60), get_call(f"{uid}-a")]
    cache.sessions.get(uid)  # connected, library checked
    node = cache._standalone
    assert node is not None
    payload = b"".join(c.packed() for c in calls[:2]) + pack(("QUIT",))
    payload += b"".join(c.packed() for c in calls[2:])
    with pytest.raises(AfterSend) as cut:
        _Batch(node, payload, 5).read()
    assert len(cut.value.got) == 3  # two records and the QUIT's OK
    cut.value.got = cut.value.got[:2]  # the batch as run_many sees it: without the QUIT
    replies = cut.value.replies(calls, [0, 1, 2, 3])
    assert all(isinstance(calls[i].parse(replies[i]), Session) for i in (0, 1))
    assert isinstance(replies[2], redis.ConnectionError) and replies[3] is REDO
    assert AfterSend(redis.ConnectionError("x"), [], 2).replies(calls, [0, 1, 2, 3])[2:] == [
        REDO,
        REDO,
    ], "calls never written are sent again, writes included"
