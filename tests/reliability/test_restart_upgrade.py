"""A server with AOF that crashes mid-load keeps its library and every acknowledged write; a new
library version deployed under load fails no call."""

from __future__ import annotations

import threading
import time

import redis

from adcache import AdCache, AlreadyExistsError
from adcache_loader.deploy import deploy, verify
from adcache_loader.render import render
from adcache_loader.servers import RedisServer


def test_aof_crash_mid_load_loses_no_acknowledged_write(redis_binary: str, uid: str) -> None:
    server = RedisServer(
        redis_binary, extra_args=["--appendonly", "yes", "--appendfsync", "always"]
    ).start()
    try:
        deploy(server.url)
        acked: list[str] = []
        stop = threading.Event()

        def load() -> None:
            cache = AdCache(
                redis.Redis(port=server.port, socket_timeout=2, socket_connect_timeout=1)
            )
            i = 0
            while not stop.is_set():
                sid = f"{uid}-{i}"
                try:
                    cache.sessions.create(sid, "u", idle_ttl=600, max_lifetime=600, index=False)
                    acked.append(sid)
                    i += 1
                except AlreadyExistsError:
                    i += 1  # applied before the crash, reply lost: not acknowledged to us
                except (redis.ConnectionError, redis.TimeoutError):
                    time.sleep(0.02)

        t = threading.Thread(target=load)
        t.start()
        time.sleep(0.5)
        before = len(acked)
        server.kill()  # a crash, not a shutdown: only what AOF holds survives
        server.start()
        time.sleep(0.5)
        stop.set()
        t.join(10)
        assert before > 50 and len(acked) > before, "the load must run before and after the crash"
        # The library came back from the AOF: no deploy was needed.
        assert [s.state for s in verify(server.url)] == ["ok"]
        cache = AdCache(server.client())
        got = cache.sessions.get_many(acked)
        missing = [sid for sid, s in zip(acked, got, strict=True) if s is None]
        assert missing == []
    finally:
        server.stop()


def test_upgrade_under_load_fails_no_call(redis_binary: str, uid: str) -> None:
    server = RedisServer(redis_binary).start()
    try:
        deploy(server.url)
        current = render()
        major, minor, patch = (int(x) for x in current.version.split("."))
        newer = current.source.replace(
            f"local LIBRARY_VERSION = '{current.version}'",
            f"local LIBRARY_VERSION = '{major}.{minor}.{patch + 1}'",
        )
        errors: list[BaseException] = []
        calls = [0]
        stop = threading.Event()

        def load(n: int) -> None:
            cache = AdCache(server.client())
            i = 0
            while not stop.is_set():
                sid = f"{uid}-{n}-{i}"
                try:
                    cache.sessions.create(sid, "u", idle_ttl=60, max_lifetime=60, index=False)
                    assert cache.sessions.get(sid) is not None
                    cache.sessions.touch(sid)
                    calls[0] += 3
                except BaseException as e:
                    errors.append(e)
                    return
                i += 1

        threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        for k in range(5):  # alternate versions while the load runs
            deploy(server.url, source=newer if k % 2 == 0 else current.source)
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join(10)
        assert errors == []
        assert calls[0] > 100
    finally:
        server.stop()
