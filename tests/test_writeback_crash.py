"""Write-back under crashes: the flusher runs in a subprocess and is SIGKILLed twice, once in the
middle of a batch's database transaction and once between a commit and its acknowledgement. A
fresh flusher (another consumer name, so it must reclaim with XAUTOCLAIM) drains the rest. The
database must then hold the last value written for every key, with every change applied exactly
once (the source's audit log lists each applied change)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from adcache import AdCache
from adcache.strategies import CachePolicy, SQLiteSource, StrategyCache, StrategyMetrics

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
SHARDS = 4

FLUSHER = """
import pathlib, sys, time
from adcache import AdCache
from adcache.strategies import Flusher, SQLiteSource

url, db, name, mode, marker, consumer = sys.argv[1:7]
SHARDS = int(sys.argv[7])

class Slow(SQLiteSource):
    applied = 0

    def after_apply(self, change):
        Slow.applied += 1
        if mode == "mid_txn" and Slow.applied == 150:  # inside the second batch's transaction
            pathlib.Path(marker).write_text("in transaction")
            time.sleep(60)
        time.sleep(0.001)

class Hooked(Flusher):
    def after_commit(self, changes, result):
        if mode == "after_commit" and result.applied:
            pathlib.Path(marker).write_text("committed, not acknowledged")
            time.sleep(60)

cache = AdCache.from_url(url)
flusher = Hooked(cache, name, Slow(db, audit=True), shards=SHARDS, consumer=consumer, batch=25,
                 claim_idle=0.3)
flusher.drain(60)
pathlib.Path(marker).write_text("drained")
"""


def _flusher(url: str, db: Path, name: str, mode: str, marker: Path, consumer: str) -> Any:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'python_client'}:{ROOT / 'loader'}")
    args = [str(db), name, mode, str(marker), consumer, str(SHARDS)]
    return subprocess.Popen([sys.executable, "-c", FLUSHER, url, *args], env=env)


def _wait_for(marker: Path, proc: Any, timeout: float = 40.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return marker.read_text()
        if proc.poll() is not None:
            raise AssertionError(f"flusher exited with {proc.returncode} before {marker.name}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"no {marker.name} within {timeout}s")


def _kill(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.returncode == -signal.SIGKILL


def _node(ac: AdCache, key: str) -> Any:
    if ac.is_cluster:
        rc: Any = ac.redis
        return rc.get_redis_connection(rc.get_node_from_key(key))
    return ac.redis


class Writer:
    """Write-back writes over a few keys, with deletes, remembering the expected final state."""

    def __init__(self, cache: StrategyCache, rng: random.Random) -> None:
        self.cache, self.rng = cache, rng
        self.expected: dict[str, Any] = {}
        self.ids: list[tuple[str, str]] = []  # (key, stream id): ids repeat across shards

    def write(self, n: int) -> None:
        for _ in range(n):
            key = f"k{self.rng.randrange(50)}"
            if self.rng.random() < 0.1:
                self.ids.append((key, self.cache.delete_back(key)))
                self.expected.pop(key, None)
            else:
                value = {"v": self.rng.randrange(10**9), "n": len(self.ids)}
                self.ids.append((key, self.cache.write_back(key, value)))
                self.expected[key] = value


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_flusher_killed_mid_batch_and_after_commit(
    request: pytest.FixtureRequest, where: str, uid: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("lib_standalone" if where == "standalone" else "lib_cluster")
    url = server.url if where == "standalone" else server.seed_url
    db = tmp_path / "db.sqlite"
    source = SQLiteSource(db, audit=True)
    ac = AdCache(server.client())
    cache = StrategyCache(ac, uid, source, CachePolicy(shards=SHARDS, ttl=600))
    w = Writer(cache, random.Random(8))
    w.write(600)

    # 1. killed inside the transaction of its second batch: that batch rolls back, stays pending.
    p1 = _flusher(url, db, uid, "mid_txn", tmp_path / "m1", "c1")
    assert _wait_for(tmp_path / "m1", p1) == "in transaction"
    _kill(p1)
    applied_1 = len(source.audit_log())
    assert 0 < applied_1 < 600, "one batch committed, the second one was cut"

    w.write(200)  # writes go on while no flusher runs
    time.sleep(0.5)  # past claim_idle: c1's pending entries are up for reclaiming

    # 2. killed after a commit, before the acknowledgement: those entries will be redelivered.
    p2 = _flusher(url, db, uid, "after_commit", tmp_path / "m2", "c2")
    assert _wait_for(tmp_path / "m2", p2) == "committed, not acknowledged"
    _kill(p2)
    assert len(source.audit_log()) > applied_1
    committed = {eid for _, eid, _ in source.audit_log()}
    unacked = [
        entry["message_id"]
        for stream in cache.space.streams()
        for entry in _node(ac, stream).xpending_range(stream, "adcache-flush", "-", "+", 1000, "c2")
    ]
    redelivered = [e for e in unacked if (e.decode() if isinstance(e, bytes) else e) in committed]
    assert redelivered, "c2 died holding committed but unacknowledged entries"

    w.write(100)
    time.sleep(0.5)

    # 3. a new consumer reclaims both dead consumers' entries and drains everything.
    p3 = _flusher(url, db, uid, "normal", tmp_path / "m3", "c3")
    assert p3.wait(60) == 0
    assert (tmp_path / "m3").read_text() == "drained"

    assert source.items() == w.expected, "the database holds the last write of every key"
    applied = [(key, eid) for key, eid, _ in source.audit_log()]
    dupes = [e for e, n in Counter(applied).items() if n > 1]
    assert not dupes, f"changes applied twice: {dupes[:5]}"
    assert sorted(applied) == sorted(w.ids), "every change applied exactly once"
    for stream in cache.space.streams():
        node = _node(ac, stream)
        assert node.xlen(stream) == 0
        assert node.xpending(stream, "adcache-flush")["pending"] == 0
    ac.close()


def test_two_flushers_race_on_the_same_streams(
    lib_standalone: Any, uid: str, tmp_path: Path
) -> None:
    """Two flushers (same group) run while writes go on: each entry goes to one of them, commits
    race, and the per-key applied ids keep the database at the last write of every key."""
    import threading

    from adcache.strategies import Flusher

    source = SQLiteSource(tmp_path / "db.sqlite", audit=True)
    ac = AdCache(lib_standalone.client())
    cache = StrategyCache(ac, uid, source, CachePolicy(shards=SHARDS, ttl=600))
    w = Writer(cache, random.Random(3))
    stop = threading.Event()
    flushers = [
        Flusher(
            AdCache(lib_standalone.client()),
            uid,
            source,
            shards=SHARDS,
            consumer=f"f{i}",
            batch=20,
            metrics=StrategyMetrics(f"{uid}-f{i}"),
        )
        for i in range(2)
    ]
    threads = [
        threading.Thread(target=f.run, args=(stop,), kwargs={"idle_sleep": 0.005, "max_idle": 0.02})
        for f in flushers
    ]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            w.write(60)
            time.sleep(0.02)
    finally:
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join(20)
    flushers[0].drain(20)
    assert source.items() == w.expected
    applied = [(key, eid) for key, eid, _ in source.audit_log()]
    assert len(applied) == len(set(applied)), "no change applied twice"
    last: dict[str, str] = {}
    for key, eid in w.ids:
        last[key] = eid
    assert set(last.items()) <= set(applied), "every key's last change was applied"
    flushed = [f.metrics.snapshot()["flush"] for f in flushers]
    assert sum(flushed) == len(applied), flushed
    ac.close()
