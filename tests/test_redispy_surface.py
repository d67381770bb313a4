"""Every redis-py attribute adcache uses beyond the documented client API (all of them reached
through `adcache._redispy`) still exists: a redis-py release that moves one fails here, by name.
`make test-oldredis` runs this file with the oldest redis-py that pyproject.toml allows."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import MovedError

from adcache import _redispy
from adcache_loader.servers import LocalCluster


def test_the_declared_lower_bound_is_the_one_tested() -> None:
    """pyproject.toml's `redis>=X` and the Makefile's test-oldredis venv name the same X."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    bound = re.search(r'"redis\[hiredis\]>=([\d.]+)', (root / "pyproject.toml").read_text())
    pinned = re.search(r"OLDEST_REDIS_PY \?= ([\d.]+)", (root / "Makefile").read_text())
    assert bound and pinned and bound.group(1) == pinned.group(1)


def test_cluster_clients_offer_what_routing_uses() -> None:
    for cls in (RedisCluster, AsyncRedisCluster):
        for name in ("get_node_from_key", "get_node", "get_nodes", "get_primaries"):
            assert callable(getattr(cls, name)), f"{cls.__qualname__}.{name}"
    assert callable(RedisCluster.get_redis_connection)
    for name in ("acquire_connection", "execute_command"):
        assert callable(getattr(AsyncClusterNode, name)), f"ClusterNode.{name}"
    e = MovedError("3999 127.0.0.1:6381")
    assert (e.slot_id, _redispy.node_address(e)) == (3999, ("127.0.0.1", 6381))


def test_a_sync_connection_offers_what_the_client_uses(lib_standalone: Any) -> None:
    pool = redis.Redis.from_url(lib_standalone.url).connection_pool
    assert lib_standalone.url.endswith("/" + _redispy.standalone_name(pool))
    conn = _redispy.pool_connection(pool)
    try:
        assert conn.can_read() is False  # connected, nothing pending
        conn.send_packed_command((_redispy.pack(("PING",)) + _redispy.pack(("GET",)),))
        read = _redispy.reader(conn)
        pong, err = read(), read()  # the parser: error replies returned, not raised
        assert pong in (b"PONG", "PONG", True) and isinstance(err, redis.ResponseError)
        assert "check_health" in inspect.signature(conn.send_packed_command).parameters
    finally:
        conn.disconnect()
        pool.release(conn)
        pool.disconnect()


def test_the_cluster_map_can_be_reloaded(lib_cluster: LocalCluster) -> None:
    rc = lib_cluster.client()
    try:
        _redispy.refresh(rc)
        assert len(rc.get_primaries()) == 3
    finally:
        rc.close()


async def test_an_asyncio_connection_can_be_adopted(lib_standalone: Any) -> None:
    client = aredis.Redis.from_url(lib_standalone.url, decode_responses=True)
    conn = await _redispy.async_pool_connection(client.connection_pool)
    transport, same, parse_error, encoding, _errors, streams = _redispy.adopt(conn)
    try:
        assert same is conn and not conn.is_connected and streams[0] is not None
        assert encoding == "utf-8" and isinstance(parse_error("ERR x"), redis.ResponseError)
        assert _redispy.socket_timeout(conn) is None or _redispy.socket_timeout(conn) > 0
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        class Catch(asyncio.Protocol):
            def data_received(self, data: bytes) -> None:
                got.set_result(data)

        transport.set_protocol(Catch())
        transport.write(_redispy.pack(("PING",)))
        assert await asyncio.wait_for(got, 5) == b"+PONG\r\n"
    finally:
        transport.close()
        await client.connection_pool.release(conn)
        await client.aclose()


async def test_asyncio_cluster_nodes_hand_out_connections(lib_cluster: LocalCluster) -> None:
    rc = AsyncRedisCluster.from_url(lib_cluster.seed_url)
    try:
        await _redispy.async_ensure_initialized(rc)
        await _redispy.async_refresh(rc)
        node = rc.get_primaries()[0]
        conn = await _redispy.async_node_connection(node)
        assert conn.is_connected
        transport, _, parse_error, *_ = _redispy.adopt(conn)
        assert isinstance(parse_error("MOVED 1 127.0.0.1:1"), MovedError)  # a cluster parser
        transport.close()
        _redispy.async_node_release(node, conn)
    finally:
        await rc.aclose()


@pytest.mark.parametrize("hiredis", [True, False])
def test_commands_pack_the_same_with_or_without_hiredis(
    hiredis: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not hiredis:
        monkeypatch.setattr(_redispy, "_hiredis_pack", None)
    assert _redispy.pack(("FCALL", "f", 1, "k", 5, b"x")) == (
        b"*6\r\n$5\r\nFCALL\r\n$1\r\nf\r\n$1\r\n1\r\n$1\r\nk\r\n$1\r\n5\r\n$1\r\nx\r\n"
    )
