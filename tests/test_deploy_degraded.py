"""`adcache deploy` and `adcache verify` on a degraded cluster: a failed primary is listed and the
exit code is non-zero for as long as any primary does not serve the library, from the kill through
its restart (empty) until the cluster routes to it again; `deploy` waits for a loading server."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from adcache import _generated
from adcache_loader import deploy as d
from adcache_loader.cli import main
from adcache_loader.servers import LocalCluster, RedisServer


@pytest.fixture
def fresh_cluster(redis_binary: str) -> Iterator[LocalCluster]:
    """3 primaries, no replicas, of this test alone (it kills one)."""
    with LocalCluster(3, 0, binary=redis_binary) as cl:
        yield cl


def _serves_library(node: RedisServer) -> bool:
    try:
        reply = node.client(socket_timeout=2).execute_command("FCALL_RO", "ac_version", 0)
    except redis.RedisError:
        return False
    return _generated.LIBRARY_SHA256.encode() in reply


def _every_primary_serves(cl: LocalCluster) -> bool:
    """Every primary answers ac_version and the seed's view flags none of them failed."""
    if not all(p.running and _serves_library(p) for p in cl.primaries):
        return False
    listing = cl.primaries[0].admin().execute_command("CLUSTER", "NODES")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return not any("fail" in line.split()[2] for line in text.splitlines() if line.strip())


def _seed_flags_fail(cl: LocalCluster, victim: RedisServer) -> bool:
    listing = cl.primaries[0].admin().execute_command("CLUSTER", "NODES")
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    for line in text.splitlines():
        parts = line.split()
        if len(parts) > 2 and parts[1].split("@")[0].endswith(f":{victim.port}"):
            return "fail" in parts[2].split(",")
    return False


def test_failed_primary_is_listed_and_fails_the_exit_code_until_it_serves_again(
    fresh_cluster: LocalCluster,
) -> None:
    cl = fresh_cluster
    runner = CliRunner()
    seed = cl.seed_url
    assert runner.invoke(main, ["deploy", "--url", seed]).exit_code == 0
    victim = cl.primaries[1]
    name = f"127.0.0.1:{victim.port}"
    victim.kill()

    # At once: the seed does not flag it yet, but it does not answer.
    for cmd in ("verify", "deploy"):
        r = runner.invoke(main, [cmd, "--url", seed])
        assert r.exit_code == 1, r.output
        assert "unreachable" in r.output
    states = {s.node: s.state for s in d.verify(seed)}
    assert len(states) == 3 and states[name] == "unreachable", states

    # Once the cluster has flagged it failed, it is still listed (not dropped from the view).
    deadline = time.monotonic() + 30
    while not _seed_flags_fail(cl, victim):
        assert time.monotonic() < deadline, "the seed never flagged the killed primary"
        time.sleep(0.2)
    (status,) = [s for s in d.verify(seed) if s.node == name]
    assert status.state == "unreachable" and "fail" in status.detail, status
    for cmd in ("verify", "deploy"):
        assert runner.invoke(main, [cmd, "--url", seed]).exit_code == 1

    # Restarted empty (no persistence): verify says so at once; deploy loads it at once. From then
    # on, whenever either command exits 0, every primary really serves the library.
    victim.start()
    r = runner.invoke(main, ["verify", "--url", seed])
    assert r.exit_code == 1, r.output
    r = runner.invoke(main, ["deploy", "--url", seed])  # at once: it loads the restarted node too
    assert _serves_library(victim), r.output
    if r.exit_code == 0:
        assert _every_primary_serves(cl), r.output
    else:
        assert "flagged" in r.output or "unreachable" in r.output, r.output
    seen: list[str] = []
    deadline = time.monotonic() + 60
    while True:
        for cmd in ("deploy", "verify"):
            r = runner.invoke(main, [cmd, "--url", seed])
            seen.append(f"{cmd}:{r.exit_code}")
            if r.exit_code == 0:
                assert _every_primary_serves(cl), r.output
        if seen[-1] == "verify:0":
            break
        assert time.monotonic() < deadline, f"never back in sync: {seen}"
        time.sleep(0.3)
    assert _serves_library(victim)
    assert {s.state for s in d.verify(seed)} == {"ok"}


def test_deploy_waits_for_a_server_loading_its_dataset(redis_binary: str) -> None:
    # A dataset that takes seconds to load: 3000 keys at 1 ms each, and a server that answers
    # LOADING meanwhile instead of blocking.
    slow = ["--key-load-delay", "1000", "--loading-process-events-interval-bytes", "1024"]
    server = RedisServer(redis_binary, extra_args=slow).start()
    try:
        admin = server.admin()
        admin.execute_command("DEBUG", "POPULATE", 3000, "loadtest", 64)
        admin.save()
        server.kill()  # the snapshot holds the keys; the next start loads it
        server.start()  # returns as soon as INFO answers: still loading
        assert d.verify(server.url)[0].state == "loading"
        r = CliRunner().invoke(main, ["verify", "--url", server.url])
        assert r.exit_code == 1 and "loading" in r.output
        r = CliRunner().invoke(main, ["deploy", "--url", server.url])
        assert r.exit_code == 0, r.output
        assert "is loading its dataset" in r.output
        assert d.verify(server.url)[0].state == "ok"
        assert server.client().dbsize() == 3000
    finally:
        server.stop()
