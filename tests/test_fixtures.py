"""Tests of the test infrastructure itself (servers.py and the conftest fixtures)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot

from adcache_loader.servers import (
    CLUSTER_SLOTS,
    ExternalCluster,
    LocalCluster,
    RedisServer,
    Standalone,
    command,
)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _keys_in_slots(prefix: str, slots: range, count: int) -> list[str]:
    """``count`` keys whose hash slot lies in ``slots`` (found by brute force)."""
    found: list[str] = []
    n = 0
    while len(found) < count:
        key = f"{prefix}-{n}"
        if key_slot(key.encode()) in slots:
            found.append(key)
        n += 1
    return found


def _slot_owners(client: RedisCluster) -> dict[tuple[int, int], tuple[str, int]]:
    """(first, last) slot range -> (host, port) of its primary, as the cluster reports."""
    # Parsed by redis-py into {(first, last): {"primary": (host, port), ...}}.
    slots: dict[tuple[int, int], dict[str, Any]] = command(client, "CLUSTER SLOTS")
    return {rng: (info["primary"][0], int(info["primary"][1])) for rng, info in slots.items()}


def _covered_slots(client: RedisCluster) -> int:
    return sum(hi - lo + 1 for lo, hi in _slot_owners(client))


def _owner_of(client: RedisCluster, key: str) -> tuple[str, int]:
    slot = key_slot(key.encode())
    return next(o for (lo, hi), o in _slot_owners(client).items() if lo <= slot <= hi)


def test_binary_is_at_least_7(redis_binary: str, redis_version: tuple[int, int, int]) -> None:
    assert os.access(redis_binary, os.X_OK)
    assert redis_version >= (7, 0, 0)


def test_uid_is_short_unique_and_key_safe(uid: str) -> None:
    assert uid.startswith("t") and len(uid) == 13
    assert not set(uid) & set("{}:")


def test_standalone_answers_ping(standalone: Standalone) -> None:
    client = standalone.client(decode_responses=True)
    try:
        assert client.ping()
        major, minor = (int(x) for x in client.info("server")["redis_version"].split(".")[:2])
        assert (major, minor) >= (7, 0)
    finally:
        client.close()


def test_cluster_has_three_primaries_and_full_coverage(
    cluster: LocalCluster | ExternalCluster, uid: str
) -> None:
    client = cluster.client(decode_responses=True)
    try:
        assert len(set(_slot_owners(client).values())) == 3
        assert client.cluster_info()["cluster_state"] == "ok"
        assert _covered_slots(client) == CLUSTER_SLOTS
        keys = [f"{uid}:{i}" for i in range(30)]
        for key in keys:
            client.set(key, key, ex=60)
        assert [client.get(key) for key in keys] == keys
        # 30 keys spread over 3 shards: more than one primary really served them.
        owners = {_owner_of(client, key) for key in keys}
        assert len(owners) > 1
        client.delete(*keys)
    finally:
        client.close()


def test_add_primary_joins_empty_and_migrates_slots(redis_binary: str, uid: str) -> None:
    # Its own cluster: topology changes must never touch the shared one.
    with LocalCluster(3, 0, binary=redis_binary) as local:
        client = local.client(decode_responses=True)
        try:
            empty = local.add_primary()
            assert len(local.primaries) == 4
            views = local.primaries[0].client(decode_responses=True)
            try:
                nodes = command(views, "CLUSTER NODES")
            finally:
                views.close()
            entry = next(v for v in nodes.values() if v["node_id"] == empty.node_id)
            assert "master" in entry["flags"] and entry["slots"] == []

            # The first primary owns 0..5460; add_primary moves its highest slots.
            moving = range(5461 - 16, 5461)
            keys = _keys_in_slots(uid, moving, 3)
            for key in keys:
                client.set(key, key)
            loaded = local.add_primary(with_slots=16)
            moved = loaded.client(decode_responses=True)
            try:
                assert sum(command(moved, "CLUSTER", "COUNTKEYSINSLOT", s) for s in moving) == 3
            finally:
                moved.close()
            fresh = local.client(decode_responses=True)
            try:
                owners = _slot_owners(fresh)
                assert owners[(moving.start, moving.stop - 1)] == ("127.0.0.1", loaded.port)
                assert len(set(owners.values())) == 4  # the empty primary owns nothing
                assert len(local.primaries) == 5
                assert [fresh.get(key) for key in keys] == keys
                assert _covered_slots(fresh) == CLUSTER_SLOTS
            finally:
                fresh.close()

            pid = empty.pid
            assert pid is not None
            local.remove_node(empty)  # forgets it everywhere, stops it, waits ok
            assert not _pid_alive(pid)
            assert len(local.primaries) == 4
            pids = [n.pid for n in local.nodes]
        finally:
            client.close()
    assert not any(_pid_alive(p) for p in pids if p is not None)


def test_failover_promotes_replica(cluster_with_replicas: LocalCluster, uid: str) -> None:
    local = cluster_with_replicas
    victim = local.primaries[0]
    replica = local.replicas_of(0)[0]
    key = _keys_in_slots(uid, range(0, 5461), 1)[0]  # a slot primaries[0] owns
    client = victim.client()
    try:
        client.set(key, "survives")
        # Make sure the replica has the write before its primary dies.
        assert client.wait(1, 2000) == 1
    finally:
        client.close()

    victim_pid = victim.pid
    assert victim_pid is not None
    started = time.monotonic()
    promoted = local.kill_primary_and_wait_failover(0, timeout=30)
    elapsed = time.monotonic() - started

    assert promoted is replica and local.primaries[0] is replica
    assert elapsed < 30
    assert not _pid_alive(victim_pid)
    direct = replica.client()
    try:
        assert command(direct, "ROLE")[0] == b"master"
    finally:
        direct.close()
    fresh = local.client(decode_responses=True)
    try:
        assert fresh.cluster_info()["cluster_state"] == "ok"
        assert fresh.get(key) == "survives"
    finally:
        fresh.close()


def test_restart_with_appendonly_keeps_data(redis_binary: str, uid: str) -> None:
    server = RedisServer(redis_binary, extra_args=["--appendonly", "yes"]).start()
    try:
        port, data_dir, first_pid = server.port, server.dir, server.pid
        client = server.client()
        client.set(uid, b"kept")
        client.close()
        server.restart()
        assert (server.port, server.dir) == (port, data_dir)
        assert server.pid != first_pid
        assert first_pid is not None and not _pid_alive(first_pid)
        client = server.client()
        assert client.get(uid) == b"kept"
        client.close()
    finally:
        server.stop()


def test_stop_leaves_no_process_or_directory(redis_binary: str) -> None:
    server = RedisServer(redis_binary).start()
    pid, data_dir = server.pid, server.dir
    assert pid is not None and _pid_alive(pid) and data_dir.is_dir()
    server.stop()
    assert not _pid_alive(pid)
    assert not data_dir.exists()
    assert not server.running


def test_kill_then_stop_cleans_up(redis_binary: str) -> None:
    server = RedisServer(redis_binary).start()
    pid, data_dir = server.pid, server.dir
    assert pid is not None
    server.kill()
    assert not _pid_alive(pid) and data_dir.is_dir()  # kept for restart()
    server.stop()
    assert not data_dir.exists()


def test_stop_never_touches_a_server_it_did_not_start(standalone: Standalone) -> None:
    if standalone.server is None:
        pytest.skip("external standalone server: no local process to compare with")
    bystander = RedisServer(standalone.server.binary, port=standalone.server.port)
    bystander.stop()  # never started: must not SHUTDOWN whatever is on that port
    client = standalone.client()
    try:
        assert client.ping()
    finally:
        client.close()


def test_docker_redis_answers_ping(docker_redis: Standalone) -> None:
    client = docker_redis.client()
    try:
        assert client.ping()
    finally:
        client.close()
