"""Facts about the server that the docs state, checked on the server under test (Redis 7, 8 and
Valkey in `make test`)."""

from __future__ import annotations

from adcache import AdCache
from adcache_loader.deploy import deploy
from adcache_loader.servers import RedisServer


def test_commandstats_counts_the_commands_run_inside_functions(redis_binary: str) -> None:
    """Round trips are the fcall/fcall_ro rows; the other rows include every command a function
    ran inside itself (docs/stats.md, README)."""
    with RedisServer(redis_binary) as s:
        deploy(s.url)
        r = s.client()
        cache = AdCache(s.client())
        try:
            cache.sessions.create("s1", "u", idle_ttl=60, max_lifetime=60, index=False)
            r.config_resetstat()
            for _ in range(3):
                cache.sessions.touch("s1")
            stats = r.info("commandstats")
            assert stats["cmdstat_fcall"]["calls"] == 3
            # touch runs HSET and PEXPIREAT inside the function: each is counted, once per call.
            assert stats["cmdstat_hset"]["calls"] == 3
            assert stats["cmdstat_pexpireat"]["calls"] >= 3
        finally:
            cache.close()
            r.close()
