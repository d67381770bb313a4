"""Client core: one round trip per call on a cluster (no COMMAND GETKEYS), error mapping, library
checks (missing, older, auto_deploy), and redirects."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from adcache import AdCache, LibraryMissingError, LibraryVersionError, aio
from adcache import _generated as keys
from adcache_loader.paths import library_source
from adcache_loader.render import render
from adcache_loader.servers import LocalCluster, RedisServer


def _commandstats(clients: list[redis.Redis]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in clients:
        for name, st in c.info("commandstats").items():
            total[name] = total.get(name, 0) + int(st["calls"])
    return total


def _primary_clients(cluster: LocalCluster) -> list[redis.Redis]:
    return [p.client() for p in cluster.primaries]


def test_cluster_calls_cost_no_command_getkeys(
    ac_cluster: AdCache, lib_cluster: LocalCluster, uid: str
) -> None:
    ids = [f"{uid}-{i}" for i in range(30)]
    ac_cluster.sessions.get_many(ids)  # the one-time library check of every node happens here
    for p in _primary_clients(lib_cluster):
        p.config_resetstat()
    for sid in ids[1:]:
        # index=False: one call per create (the per-user index is a second, cross-tag call)
        ac_cluster.sessions.create(sid, "u", idle_ttl=60, max_lifetime=60, index=False)
        ac_cluster.sessions.get(sid)
    stats = _commandstats(_primary_clients(lib_cluster))
    assert stats.get("cmdstat_command|getkeys", 0) == 0
    assert stats.get("cmdstat_fcall") == 29 and stats.get("cmdstat_fcall_ro") == 29

    # The check can fail: plain redis-py RedisCluster.fcall does ask for the keys first.
    plain = lib_cluster.client()
    try:
        plain.fcall("ac_session_get", 1, keys.session(ids[1]))
    finally:
        plain.close()
    assert _commandstats(_primary_clients(lib_cluster)).get("cmdstat_command|getkeys", 0) >= 1


async def test_async_cluster_calls_cost_no_command_getkeys(
    aac_cluster: aio.AdCache, lib_cluster: LocalCluster, uid: str
) -> None:
    await aac_cluster.sessions.create(uid, "warm", idle_ttl=60, max_lifetime=60)
    for other in range(10):  # touch every node once so library checks are done
        await aac_cluster.sessions.get(f"{uid}-{other}")
    for p in _primary_clients(lib_cluster):
        p.config_resetstat()
    for i in range(20):
        await aac_cluster.sessions.get(f"{uid}-{i}")
    await aac_cluster.sessions.get_many([f"{uid}-{i}" for i in range(20)])
    stats = _commandstats(_primary_clients(lib_cluster))
    assert stats.get("cmdstat_command|getkeys", 0) == 0
    assert stats.get("cmdstat_fcall_ro") == 40


@pytest.fixture
def bare_server(redis_binary: str) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary).start()
    yield server
    server.stop()


def test_missing_library_names_the_node_and_how_to_deploy(
    bare_server: RedisServer, uid: str
) -> None:
    cache = AdCache(bare_server.client())
    with pytest.raises(LibraryMissingError) as e:
        cache.sessions.get(uid)
    assert f"{bare_server.port}" in str(e.value) and "adcache deploy" in str(e.value)
    assert e.value.node and str(bare_server.port) in e.value.node


def test_auto_deploy_loads_the_library_and_retries(bare_server: RedisServer, uid: str) -> None:
    cache = AdCache(bare_server.client(), auto_deploy=True)
    assert cache.sessions.get(uid) is None
    # A restart without persistence loses functions: the verified client notices and reloads.
    bare_server.client().function_flush()
    cache.sessions.create(uid, "u", idle_ttl=10, max_lifetime=10)
    assert cache.sessions.get(uid) is not None


def test_library_lost_after_verification_raises_without_auto_deploy(
    bare_server: RedisServer, uid: str
) -> None:
    bare_server.client().function_load(library_source(), replace=True)
    cache = AdCache(bare_server.client())
    assert cache.sessions.get(uid) is None
    bare_server.client().function_flush()
    with pytest.raises(LibraryMissingError):
        cache.sessions.get(uid)


def test_older_library_is_refused(bare_server: RedisServer, uid: str) -> None:
    old = render().source.replace("local LIBRARY_VERSION = '", "local LIBRARY_VERSION = '0.0.0-", 1)
    old = old.replace("'0.0.0-" + keys.LIBRARY_VERSION + "'", "'0.0.1'")
    bare_server.client().function_load(old, replace=True)
    with pytest.raises(LibraryVersionError, match=r"0\.0\.1"):
        AdCache(bare_server.client()).sessions.get(uid)


async def test_async_auto_deploy(bare_server: RedisServer, uid: str) -> None:
    import redis.asyncio as aredis

    cache = aio.AdCache(aredis.Redis(port=bare_server.port), auto_deploy=True)
    try:
        await cache.sessions.create(uid, "u", idle_ttl=10, max_lifetime=10)
        assert (await cache.sessions.get(uid)) is not None
    finally:
        await cache.aclose()


def test_auto_deploy_on_a_cluster_shard_without_library(redis_binary: str, uid: str) -> None:
    with LocalCluster(3, binary=redis_binary) as cl:
        from adcache_loader.deploy import deploy

        deploy(cl.seed_url)
        cl.primaries[1].client().function_flush()  # one shard lost its functions
        cache = AdCache(cl.client(), auto_deploy=True)
        ids = [f"{uid}-{i}" for i in range(30)]
        for sid in ids:
            cache.sessions.create(sid, "u", idle_ttl=10, max_lifetime=10)
        assert all(cache.sessions.get_many(ids))
        strict = AdCache(cl.client())
        cl.primaries[2].client().function_flush()
        with pytest.raises(LibraryMissingError, match=str(cl.primaries[2].port)):
            strict.sessions.get_many(ids)


def test_moved_slot_is_followed(redis_binary: str, uid: str) -> None:
    """After slots move to a new primary the client follows MOVED and keeps working."""
    with LocalCluster(3, binary=redis_binary) as cl:
        from adcache_loader.deploy import deploy

        deploy(cl.seed_url)
        cache = AdCache(cl.client())
        ids = [f"{uid}-{i}" for i in range(200)]
        for sid in ids:
            cache.sessions.create(sid, "u", idle_ttl=60, max_lifetime=60)
        new = cl.add_primary(with_slots=0)
        deploy(cl.seed_url)
        # move slots owned by the first primary after the client has cached the map
        cl._migrate_slots(cl.primaries[0], new, 2000)
        cl.wait_ok()
        assert all(s is not None for s in (cache.sessions.get(i) for i in ids))
        assert all(cache.sessions.get_many(ids))


def test_keys_of_two_slots_raise_cross_slot_error(ac_cluster: AdCache, uid: str) -> None:
    from adcache import Call, CrossSlotError

    call: Call[object] = Call(
        "ac_auction_bid", (keys.auction(uid), keys.auction_bids(uid + "-other")), (), lambda r: r
    )
    with pytest.raises(CrossSlotError):
        ac_cluster.run(call)
    assert isinstance(ac_cluster.run_many([call], raise_on_error=False)[0], CrossSlotError)


async def test_async_keys_of_two_slots_raise_cross_slot_error(
    aac_cluster: aio.AdCache, uid: str
) -> None:
    from adcache import Call, CrossSlotError

    call: Call[object] = Call(
        "ac_auction_bid", (keys.auction(uid), keys.auction_bids(uid + "-other")), (), lambda r: r
    )
    with pytest.raises(CrossSlotError):
        await aac_cluster.run(call)


# ---- typed errors at the edge ----


@pytest.mark.parametrize("bad", ["abc", float("nan"), float("inf"), "NaN", True, None])
def test_a_bad_money_amount_is_a_bad_argument(ac: AdCache, uid: str, bad: object) -> None:
    from adcache import BadArgumentError
    from adcache.auctions import Bid, Imp

    with pytest.raises(BadArgumentError):
        ac.auctions.create(uid, [Imp("1", floor=bad)], tmax_ms=60_000)  # type: ignore[arg-type]
    assert ac.redis.exists(keys.auction(uid)) == 0  # nothing was sent
    ac.auctions.create(uid, [Imp("1", floor="0.5")], tmax_ms=60_000)
    with pytest.raises(BadArgumentError):
        ac.auctions.bid(uid, Bid(bid_id="b", imp_id="1", seat="s", price=bad))  # type: ignore[arg-type]
    assert ac.redis.exists(keys.auction_bids(uid)) == 0


def test_money_amounts_raise_adcache_errors_not_value_errors() -> None:
    from adcache import AdCacheError
    from adcache.money import to_micros
    from adcache.profiles import score_from_points

    for bad in ("x", float("nan"), "1e999999999999"):
        with pytest.raises(AdCacheError):
            to_micros(bad)
    with pytest.raises(AdCacheError):
        score_from_points("x")


def _no_function_load_user(server: RedisServer) -> redis.Redis:
    admin = server.client()
    admin.execute_command("ACL", "SETUSER", "nofl", "on", ">pw", "~*", "+@all", "-function|load")
    admin.close()
    return server.client(username="nofl", password="pw")


def test_auto_deploy_without_the_right_to_load_names_node_and_command(
    bare_server: RedisServer, uid: str
) -> None:
    cache = AdCache(_no_function_load_user(bare_server), auto_deploy=True)
    with pytest.raises(LibraryMissingError) as e:
        cache.sessions.get(uid)
    assert str(bare_server.port) in str(e.value) and "adcache deploy" in str(e.value)
    assert e.value.node is not None and str(bare_server.port) in e.value.node


async def test_async_auto_deploy_without_the_right_to_load(
    bare_server: RedisServer, uid: str
) -> None:
    import redis.asyncio as aredis

    _no_function_load_user(bare_server).close()
    cache = aio.AdCache(
        aredis.Redis(port=bare_server.port, username="nofl", password="pw"), auto_deploy=True
    )
    try:
        with pytest.raises(LibraryMissingError, match="adcache deploy"):
            await cache.sessions.get(uid)
    finally:
        await cache.aclose()


# ---- kept connections and pipelined links ----


def test_threads_sharing_a_client_get_their_own_replies(ac: AdCache, uid: str) -> None:
    import threading

    ids = [f"{uid}-{i}" for i in range(16)]
    for i, sid in enumerate(ids):
        ac.sessions.create(sid, f"user{i}", idle_ttl=60, max_lifetime=60, index=False)
    wrong: list[str] = []

    def work(i: int) -> None:
        for _ in range(100):
            s = ac.sessions.get(ids[i])
            if s is None or s.user_id != f"user{i}":
                wrong.append(f"{i}: {s!r}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


async def test_a_cancelled_async_call_leaves_the_link_in_step(
    lib_standalone: object, uid: str
) -> None:
    import asyncio

    import redis.asyncio as aredis

    url = lib_standalone.url  # type: ignore[attr-defined]
    cache = aio.AdCache(aredis.Redis.from_url(url))
    admin = redis.Redis.from_url(url)
    try:
        await cache.sessions.create(uid, "first", idle_ttl=60, max_lifetime=60, index=False)
        await cache.sessions.create(f"{uid}-2", "second", idle_ttl=60, max_lifetime=60)
        admin.execute_command("CLIENT", "PAUSE", "300", "ALL")
        pending = asyncio.ensure_future(cache.sessions.get(uid))
        await asyncio.sleep(0.05)
        pending.cancel()  # its reply arrives later and must go nowhere
        got = await cache.sessions.get(f"{uid}-2")
        assert got is not None and got.user_id == "second"
        again = await cache.sessions.get(uid)
        assert again is not None and again.user_id == "first"
    finally:
        admin.close()
        await cache.aclose()


async def test_an_async_write_without_reply_in_time_is_not_sent_again(
    bare_server: RedisServer, uid: str
) -> None:
    import asyncio

    import redis.asyncio as aredis

    bare_server.client().function_load(library_source(), replace=True)
    cache = aio.AdCache(aredis.Redis(port=bare_server.port, socket_timeout=0.2))
    admin = bare_server.client()
    try:
        assert await cache.sessions.get(uid) is None  # link open, library checked
        admin.execute_command("CLIENT", "PAUSE", "600", "WRITE")
        with pytest.raises(redis.TimeoutError):
            await cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60, index=False)
        await asyncio.sleep(0.7)
        # The timed-out link was closed (the server dropped the paused command with it) and the
        # client did not send the write again: had it retried, the session would exist now. A
        # read goes through on a new link.
        assert await cache.sessions.get(uid) is None
    finally:
        admin.close()
        await cache.aclose()
