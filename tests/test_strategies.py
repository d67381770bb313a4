"""Caching strategies end to end: real Redis (standalone and cluster) over a real SQLite database.

Read paths (read-through, cache-aside, negative entries, stale serving, early refresh), stampede
protection across threads and processes, invalidation by key and by tag, write-through,
write-around and write-back with its flusher, and bad input that must change nothing.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from adcache import (
    AdCache,
    ArityError,
    BadArgumentError,
    BadKeyError,
    Call,
    CorruptStateError,
    CrossSlotError,
    LimitExceededError,
    NotFoundError,
    aio,
)
from adcache import _generated as keys
from adcache.caches import Space
from adcache.strategies import (
    AsyncFlusher,
    AsyncStrategyCache,
    CachePolicy,
    Change,
    Flusher,
    SQLiteSource,
    StrategyCache,
    StrategyMetrics,
    all_metrics,
)

pytestmark = pytest.mark.timeout(60)

# Concurrency tests: a loader starved by a busy machine must neither lose its lock nor be given up.
STAMPEDE = CachePolicy(shards=8, lock_ttl=20, wait_timeout=20)


class CountingSource(SQLiteSource):
    """SQLite source that counts its loads in the database itself (so across processes too) and
    can be slowed down, to widen the window in which readers pile up."""

    def __init__(self, path: str | Path, table: str = "kv", *, delay: float = 0.0) -> None:
        super().__init__(path, table)
        self.delay = delay
        with self._tx() as db:
            db.execute("CREATE TABLE IF NOT EXISTS loads (key TEXT PRIMARY KEY, n INTEGER)")

    def _count(self, ks: Sequence[str]) -> None:
        with self._tx() as db:
            for k in ks:
                db.execute(
                    "INSERT INTO loads VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1",
                    (k,),
                )

    def load(self, key: str) -> Any | None:
        self._count([key])
        time.sleep(self.delay)
        return super().load(key)

    def load_many(self, keys: Sequence[str]) -> dict[str, Any]:
        self._count(keys)
        return super().load_many(keys)

    def loads(self, key: str | None = None) -> int:
        db = self._conn()
        if key is None:
            return int(db.execute("SELECT COALESCE(SUM(n), 0) FROM loads").fetchone()[0])
        row = db.execute("SELECT n FROM loads WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])


@pytest.fixture
def src(tmp_path: Path) -> CountingSource:
    return CountingSource(tmp_path / "source.sqlite")


def _cache(ac: AdCache, uid: str, source: SQLiteSource, **policy: Any) -> StrategyCache:
    policy.setdefault("shards", 8)
    return StrategyCache(ac, uid, source, CachePolicy(**policy), metrics=StrategyMetrics(uid))


def _node_of(ac: AdCache, key: str) -> Any:
    """A plain redis client of the node owning `key` (standalone: the server)."""
    if ac.is_cluster:
        rc: Any = ac.redis
        return rc.get_redis_connection(rc.get_node_from_key(key))
    return ac.redis


# ---- read-through / cache-aside ----


def test_read_through_loads_once_then_hits(acs: AdCache, uid: str, src: CountingSource) -> None:
    src.save("a", {"price": 3})
    c = _cache(acs, uid, src, ttl=60, jitter=0.0, stale_grace=10)
    assert c.get("a") == {"price": 3}
    assert c.get("a") == {"price": 3}
    assert src.loads("a") == 1
    snap = c.metrics.snapshot()
    assert (snap["hit"], snap["miss"], snap["load"]) == (1, 1, 1)
    vkey = c.space.value_key("a")
    pttl = _node_of(acs, vkey).pttl(vkey)
    assert 69_000 < pttl <= 70_000, "the key lives ttl + stale grace"


def test_cache_aside_with_own_loader(acs: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(acs, uid, src)
    calls: list[str] = []

    def loader(key: str) -> Any:
        calls.append(key)
        return {"computed": key}

    assert c.get("x", loader) == {"computed": "x"}
    assert c.get("x", loader) == {"computed": "x"}
    assert calls == ["x"] and src.loads() == 0


def test_get_many_loads_misses_in_one_batch(acs: AdCache, uid: str, src: CountingSource) -> None:
    for i in range(20):
        src.save(f"k{i}", i)
    c = _cache(acs, uid, src)
    assert c.get("k3") == 3
    got = c.get_many([f"k{i}" for i in range(25)])
    assert got == {f"k{i}": i for i in range(20)}
    assert src.loads() == 1 + 24, "k3 was cached; the 24 others were loaded by one load_many"
    assert c.get_many([f"k{i}" for i in range(25)]) == got
    assert src.loads() == 25, "the second round is all hits (negative entries for k20..k24)"


def test_get_many_concurrent_batches_load_each_key_once(
    lib_standalone: Any, uid: str, tmp_path: Path
) -> None:
    source = CountingSource(tmp_path / "db.sqlite", delay=0.2)
    for i in range(30):
        source.save(f"k{i}", i)
    want = {f"k{i}": i for i in range(30)}
    ks = [f"k{i}" for i in range(35)]
    errors: list[BaseException] = []
    got: list[dict[str, Any]] = []
    start = threading.Barrier(10)

    def batch(seed: int) -> None:
        try:
            c = StrategyCache(AdCache(lib_standalone.client()), uid, source, STAMPEDE)
            start.wait(10)
            got.append(c.get_many(ks[seed:] + ks[:seed]))
            c._c.close()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert got == [want] * 10
    assert all(source.loads(k) == 1 for k in ks), "each key loaded once across 10 batches"


def test_ttl_jitter_spreads_expiries(ac: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(ac, uid, src, ttl=100, jitter=0.2, stale_grace=0)
    for i in range(40):
        c.write_through(f"j{i}", i)
    ttls = [ac.redis.pttl(c.space.value_key(f"j{i}")) for i in range(40)]
    assert all(79_000 <= t <= 120_000 for t in ttls)
    assert max(ttls) - min(ttls) > 5_000, "jitter must spread the expiries"


def test_negative_caching(ac: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(ac, uid, src, negative_ttl=1.0)
    assert c.get("ghost") is None
    assert c.get("ghost") is None
    assert src.loads("ghost") == 1, "the miss was cached"
    assert c.metrics.snapshot()["negative_hit"] == 1
    assert 0 < ac.redis.pttl(c.space.value_key("ghost")) <= 1000
    deadline = ac.redis.pexpiretime(c.space.value_key("ghost"))
    src.save("ghost", "now here")  # behind the cache's back: visible after the negative TTL
    assert c.get("ghost") is None
    time.sleep(max(0.0, (deadline - int(time.time() * 1000)) / 1000) + 0.3)  # a wide margin
    assert c.get("ghost") == "now here"
    assert src.loads("ghost") == 2


def test_negative_caching_off(ac: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(ac, uid, src, negative_ttl=0)
    assert c.get("ghost") is None and c.get("ghost") is None
    assert src.loads("ghost") == 2
    assert ac.redis.exists(c.space.value_key("ghost"), c.space.lock_key("ghost")) == 0
    assert c.metrics.snapshot()["fill_lost"] == 0, "an uncached miss is released, not lost"


def test_negative_caching_off_get_many_counts_no_lost_fill(
    acs: AdCache, uid: str, src: CountingSource
) -> None:
    src.save("there", 1)
    c = _cache(acs, uid, src, negative_ttl=0)
    assert c.get_many(["ghost", "there", "gone"]) == {"there": 1}
    snap = c.metrics.snapshot()
    assert (snap["load"], snap["fill_lost"]) == (3, 0)
    assert c.get_many(["ghost", "there"]) == {"there": 1}
    assert src.loads("ghost") == 2 and src.loads("there") == 1


def test_stale_value_served_while_another_reloads(
    acs: AdCache, uid: str, src: CountingSource
) -> None:
    src.save("s", "old")
    c = _cache(acs, uid, src, ttl=0.3, jitter=0, stale_grace=10, early_refresh=0)
    assert c.get("s") == "old"
    src.save("s", "new")
    time.sleep(0.4)
    # Another caller is refreshing it: it holds the lock (taken here by hand).
    lk = acs.caches.get(c.space, "s", "other", lock_ttl_ms=5000)
    assert lk.status == "reload" and lk.payload == '"old"'
    assert c.get("s") == "old"
    assert c.metrics.snapshot()["stale_served"] == 1
    assert acs.caches.fill(c.space, "s", "other", '"new"', ttl_ms=60_000, grace_ms=0, load_ms=1)
    assert c.get("s") == "new"


def test_stale_value_reloaded_by_first_reader(ac: AdCache, uid: str, src: CountingSource) -> None:
    src.save("s", 1)
    c = _cache(ac, uid, src, ttl=0.2, jitter=0, stale_grace=10, early_refresh=0)
    assert c.get("s") == 1
    src.save("s", 2)
    time.sleep(0.3)
    assert c.get("s") == 2
    assert src.loads("s") == 2


def test_stale_value_served_when_reload_fails(ac: AdCache, uid: str, src: CountingSource) -> None:
    src.save("s", "kept")
    c = _cache(ac, uid, src, ttl=0.2, jitter=0, stale_grace=10, early_refresh=0)
    assert c.get("s") == "kept"
    time.sleep(0.3)

    def broken(key: str) -> Any:
        raise RuntimeError("database down")

    assert c.get("s", broken) == "kept"
    snap = c.metrics.snapshot()
    assert snap["load_error"] == 1 and snap["stale_served"] == 1


def test_early_refresh_before_expiry(ac: AdCache, uid: str, src: CountingSource) -> None:
    src.save("hot", 1)
    slow = CountingSource(src.path, delay=0.02)
    eager = _cache(ac, uid, slow, ttl=60, early_refresh=1e9)  # refresh on every hit
    assert eager.get("hot") == 1
    src.save("hot", 2)
    assert eager.get("hot") == 2, "refreshed early, long before the 60 s TTL"
    assert eager.metrics.snapshot()["early_refresh"] == 1

    def broken(key: str) -> Any:
        raise RuntimeError("database down")

    assert eager.get("hot", broken) == 2, "a failed early refresh serves the fresh value"
    snap = eager.metrics.snapshot()
    assert snap["load_error"] == 1 and snap["stale_served"] == 0
    never = _cache(ac, uid + "n", slow, ttl=60, early_refresh=0)
    never.get("hot")
    loads = slow.loads("hot")
    for _ in range(20):
        never.get("hot")
    assert slow.loads("hot") == loads


# ---- stampede protection ----


def _readers(factory: Any, n: int, key: str) -> list[Any]:
    """n threads, each with its own AdCache over its own redis client, read `key` at once."""
    caches = [factory() for _ in range(n)]
    start = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def read(i: int) -> None:
        try:
            start.wait(10)
            results[i] = caches[i].get(key)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for c in caches:
        c._c.close()
    assert not errors, errors
    return results


@pytest.mark.parametrize("where", ["standalone", "cluster"])
def test_stampede_50_threads_one_load(
    request: pytest.FixtureRequest, where: str, uid: str, tmp_path: Path
) -> None:
    server = request.getfixturevalue("lib_standalone" if where == "standalone" else "lib_cluster")
    source = CountingSource(tmp_path / "db.sqlite", delay=0.3)
    source.save("cold", {"v": 42})
    metrics = StrategyMetrics(uid)

    def factory() -> StrategyCache:
        return StrategyCache(AdCache(server.client()), uid, source, STAMPEDE, metrics=metrics)

    results = _readers(factory, 50, "cold")
    assert results == [{"v": 42}] * 50
    assert source.loads("cold") == 1, "exactly one loader for 50 concurrent readers"
    snap = metrics.snapshot()
    assert snap["load"] == 1 and snap["hit"] + snap["miss"] + snap["stale_served"] == 50


def _process_readers(url: str, path: str, name: str, n: int, start: Any, out: Any) -> None:
    source = CountingSource(path, delay=0.3)
    caches = [
        StrategyCache(AdCache(redis.Redis.from_url(url)), name, source, STAMPEDE) for _ in range(n)
    ]
    got: list[Any] = [None] * n

    def read(i: int) -> None:
        got[i] = caches[i].get("cold")

    start.wait(20)
    threads = [threading.Thread(target=read, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    out.put(got)


def test_stampede_50_readers_in_5_processes_one_load(
    lib_standalone: Any, uid: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "db.sqlite")
    source = CountingSource(path)
    source.save("cold", "shared")
    ctx = multiprocessing.get_context("fork")
    start = ctx.Barrier(5)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_process_readers, args=(lib_standalone.url, path, uid, 10, start, out))
        for _ in range(5)
    ]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=40) for _ in procs]
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    assert [r for batch in results for r in batch] == ["shared"] * 50
    assert source.loads("cold") == 1, "one loader across processes"


# ---- invalidation ----


def test_invalidation_cancels_a_load_in_flight(ac: AdCache, uid: str, src: CountingSource) -> None:
    src.save("k", "v1")
    c = _cache(ac, uid, src)
    # A reader took the lock and loaded v1 ...
    lk = ac.caches.get(c.space, "k", "reader", lock_ttl_ms=5000)
    assert lk.status == "load"
    loaded = src.load("k")
    # ... a writer changes the source and invalidates before the reader fills ...
    c.write_around("k", "v2")
    # ... so the reader's fill of the old value is refused.
    assert not ac.caches.fill(
        c.space, "k", "reader", f'"{loaded}"', ttl_ms=60_000, grace_ms=0, load_ms=1
    )
    assert c.get("k") == "v2"


def test_invalidate_key(acs: AdCache, uid: str, src: CountingSource) -> None:
    src.save("k", 1)
    c = _cache(acs, uid, src)
    c.get("k")
    src.save("k", 2)
    assert c.get("k") == 1
    assert c.invalidate("k") is True
    assert c.invalidate("k") is False
    assert c.get("k") == 2


def test_tag_invalidation_over_shards(acs: AdCache, uid: str, src: CountingSource) -> None:
    for i in range(40):
        src.save(f"ad{i}", {"color": "red" if i % 2 else "blue", "n": i})
    c = StrategyCache(
        acs,
        uid,
        src,
        CachePolicy(shards=8),
        tags_for=lambda k, v: [v["color"], "all"],
        metrics=StrategyMetrics(uid),
    )
    for i in range(40):
        c.get(f"ad{i}")
    assert len({c.space.shard(f"ad{i}") for i in range(40)}) == 8, "keys spread over all shards"
    assert src.loads() == 40
    assert c.invalidate_tag("red") == 20
    for i in range(40):
        c.get(f"ad{i}")
    assert src.loads() == 60, "only the red ones were dropped and reloaded"
    c.write_through("extra", {"color": "green"}, tags=["all"])
    assert c.invalidate_tag("all") == 41
    assert c.invalidate_tag("all") == 0, "the tag sets are gone with their values"
    assert c.invalidate_tag("never-used") == 0


def test_an_absence_written_through_is_not_tagged(acs: AdCache, uid: str, tmp_path: Path) -> None:
    """tags_for is asked about values only: a None written through (to a source that takes it
    as a delete) caches an absence, untagged."""

    class NoneDeletes(CountingSource):
        def save(self, key: str, value: Any) -> None:
            self.delete(key) if value is None else super().save(key, value)

    src = NoneDeletes(tmp_path / "none.sqlite")
    src.save("gone", {"color": "red"})
    c = StrategyCache(acs, uid, src, CachePolicy(shards=8), tags_for=lambda k, v: [v["color"]])
    c.write_through("gone", None)
    assert c.get("gone") is None and src.loads("gone") == 0 and src.items() == {}


# ---- writes ----


def test_write_through(acs: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(acs, uid, src)
    c.write_through("w", {"bid": 1})
    assert src.items() == {"w": {"bid": 1}}
    assert c.get("w") == {"bid": 1}
    assert src.loads("w") == 0 and c.metrics.snapshot()["hit"] == 1
    c.delete_through("w")
    assert src.items() == {} and c.get("w") is None
    assert src.loads("w") == 0, "the delete cached its absence"


class JitterySource(SQLiteSource):
    """Saves wait a random few milliseconds before and after the commit, so concurrent writers
    commit in another order than they began, and finish in yet another."""

    def save(self, key: str, value: Any) -> None:
        time.sleep(random.random() * 0.003)
        super().save(key, value)
        time.sleep(random.random() * 0.005)


def test_concurrent_write_through_leaves_the_database_value(
    lib_standalone: Any, uid: str, tmp_path: Path
) -> None:
    source = JitterySource(tmp_path / "db.sqlite")
    caches = [
        StrategyCache(AdCache(lib_standalone.client()), uid, source, CachePolicy(shards=4))
        for _ in range(8)
    ]
    errors: list[BaseException] = []
    stale_rounds = 0
    for rnd in range(30):
        start = threading.Barrier(8)

        def write(w: int, rnd: int = rnd, start: threading.Barrier = start) -> None:
            try:
                start.wait(10)
                caches[w].write_through("hot", {"writer": w, "round": rnd})
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=write, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not errors, errors
        if caches[0].get("hot") != source.load("hot"):
            stale_rounds += 1
            caches[0].invalidate("hot")
    for c in caches:
        c._c.close()
    assert stale_rounds == 0, f"{stale_rounds}/30 rounds left a losing writer's value cached"


def test_overlapping_write_through_sets_drop_the_key(acs: AdCache, uid: str) -> None:
    sp = Space(uid, 2)
    vkey = sp.value_key("k")
    node = _node_of(acs, vkey)
    acs.caches.write_begin(sp, "k", "A", ttl_ms=5000)
    acs.caches.write_begin(sp, "k", "B", ttl_ms=5000)
    # The database committed B, then A: A's value is the database's. A's set runs first...
    assert acs.caches.set(sp, "k", "A", '"a"', ttl_ms=60_000, grace_ms=0) is False
    # ... and B, the last to begin, must not store its older value either.
    assert acs.caches.set(sp, "k", "B", '"b"', ttl_ms=60_000, grace_ms=0) is False
    assert node.exists(vkey, sp.writer_key("k")) == 0
    # The other order: B stores, then A drops what B stored.
    acs.caches.write_begin(sp, "k", "A", ttl_ms=5000)
    acs.caches.write_begin(sp, "k", "B", ttl_ms=5000)
    assert acs.caches.set(sp, "k", "B", '"b"', ttl_ms=60_000, grace_ms=0) is True
    assert acs.caches.set(sp, "k", "A", '"a"', ttl_ms=60_000, grace_ms=0) is False
    assert node.exists(vkey) == 0
    # A lone writer stores.
    acs.caches.write_begin(sp, "k", "C", ttl_ms=5000)
    assert acs.caches.set(sp, "k", "C", '"c"', ttl_ms=60_000, grace_ms=0) is True
    assert node.hget(vkey, "p") in (b'"c"', '"c"')


class PickySource(CountingSource):
    def save(self, key: str, value: Any) -> None:
        if not isinstance(value, dict):
            raise ValueError("the database refuses non-objects")
        super().save(key, value)


def test_write_through_refused_by_database_leaves_cache(
    ac: AdCache, uid: str, tmp_path: Path
) -> None:
    src = PickySource(tmp_path / "p.sqlite")
    c = _cache(ac, uid, src)
    c.write_through("w", {"ok": 1})
    with pytest.raises(ValueError):
        c.write_through("w", "not an object")
    assert c.get("w") == {"ok": 1} and src.load("w") == {"ok": 1}


def test_write_through_cache_failure_invalidates(
    acs: AdCache, uid: str, src: CountingSource
) -> None:
    c = _cache(acs, uid, src)
    c.write_through("w", "v1")
    # The cache write of v2 fails (its tag key holds a string); v1 must not stay cached.
    tag_key = c.space.tag_keys("w", ["t"])[0]
    _node_of(acs, tag_key).set(tag_key, "not a set")
    c.write_through("w", "v2", tags=["t"])
    assert src.load("w") == "v2"
    vkey = c.space.value_key("w")
    assert _node_of(acs, vkey).exists(vkey) == 0, "invalidated, not left stale"
    assert c.get("w") == "v2"


def test_write_around(acs: AdCache, uid: str, src: CountingSource) -> None:
    src.save("k", "old")
    c = _cache(acs, uid, src)
    assert c.get("k") == "old"
    c.write_around("k", "new")
    vkey = c.space.value_key("k")
    assert _node_of(acs, vkey).exists(vkey) == 0
    assert c.get("k") == "new" and src.loads("k") == 2
    c.delete_around("k")
    assert c.get("k") is None and src.load("k") is None


def test_write_back_reads_its_write_and_flushes(acs: AdCache, uid: str, src: SQLiteSource) -> None:
    c = _cache(acs, uid, src)
    ids = [c.write_back("k", {"n": n}) for n in range(3)]
    c.delete_back("gone")
    assert src.load("k") is None, "not flushed yet"
    assert c.get("k") == {"n": 2}, "the cache holds the write at once"
    assert c.get("gone") is None
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))
    # The change record sits in the stream of the key's shard, in the same slot as the value.
    stream = c.space.stream(c.space.shard("k"))
    node = _node_of(acs, stream)
    mine = [e for e in node.xrange(stream) if e[1].get(b"k") == b"k"]
    assert [e[0].decode() for e in mine] == ids
    assert keys.tag_of("cache", c.space.id_of("k")) in stream
    f = Flusher(acs, uid, src, shards=8, consumer="f1", metrics=c.metrics)
    assert f.drain(20) == 4
    assert src.load("k") == {"n": 2}
    assert node.xlen(stream) == 0, "flushed entries are deleted"
    assert c.metrics.snapshot()["flush"] == 4
    src.save("gone", "x")
    c.delete_back("gone")
    f.drain(20)
    assert src.load("gone") is None


def test_write_back_value_is_pinned_until_flushed(
    acs: AdCache, uid: str, src: CountingSource
) -> None:
    src.save("k", "database row")
    c = _cache(acs, uid, src, ttl=0.2, jitter=0, stale_grace=10, early_refresh=0)
    first = c.write_back("k", "w1")
    second = c.write_back("k", "w2")
    vkey = c.space.value_key("k")
    node = _node_of(acs, vkey)
    assert node.pttl(vkey) == -1, "dirty: no TTL until flushed"
    time.sleep(0.3)  # past the logical TTL: still served, never reloaded from the older row
    assert c.get("k") == "w2" and src.loads("k") == 0
    assert c.invalidate("k") is False, "invalidation keeps a dirty value"
    c.write_back("t", "tagged", tags=["grp"])
    assert c.invalidate_tag("grp") == 0
    assert c.get("k") == "w2" and c.get("t") == "tagged" and src.loads() == 0
    # Acknowledging the older change does not unpin a value written again since.
    f = Flusher(acs, uid, src, shards=8, consumer="f")
    f.ensure_groups()
    stream = c.space.stream(c.space.shard("k"))
    node.xreadgroup("adcache-flush", "f", {stream: ">"})
    acs.caches.wb_ack(stream, "adcache-flush", [first], [vkey])
    assert node.pttl(vkey) == -1
    acs.caches.wb_ack(stream, "adcache-flush", [second], [vkey])
    assert 0 < node.pttl(vkey) <= 10_200, "flushed: back to its TTL (+ grace)"
    f.drain(20)
    assert src.load("t") == "tagged"
    assert c.invalidate_tag("grp") == 1, "flushed: the tag drops it now"


def test_failed_load_releases_the_lock(ac: AdCache, uid: str, src: CountingSource) -> None:
    c = _cache(ac, uid, src)

    def broken(key: str) -> Any:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError):
        c.get("k", broken)
    assert ac.redis.exists(c.space.lock_key("k")) == 0, "a waiting caller may load at once"
    assert c.metrics.snapshot()["load_error"] == 1


def test_flusher_reclaims_entries_of_a_dead_consumer(ac: AdCache, uid: str, tmp_path: Path) -> None:
    src = SQLiteSource(tmp_path / "db.sqlite", audit=True)
    c = _cache(ac, uid, src)
    for i in range(30):
        c.write_back(f"k{i % 7}", i)

    class Broken(SQLiteSource):
        def apply_changes(self, changes: Sequence[Change]) -> Any:
            raise RuntimeError("crashed before commit")

    dead = Flusher(ac, uid, Broken(tmp_path / "db.sqlite"), shards=8, consumer="dead")
    with pytest.raises(RuntimeError):
        dead.step()  # its entries stay pending on "dead"
    alive = Flusher(ac, uid, src, shards=8, consumer="alive", claim_idle=0.2)
    assert alive.drain(20) == 30
    assert src.items() == {f"k{k}": max(i for i in range(30) if i % 7 == k) for k in range(7)}
    assert len(src.audit_log()) == 30


def test_flusher_restarted_under_its_name_settles_its_own_pending_first(
    ac: AdCache, uid: str, tmp_path: Path
) -> None:
    src = SQLiteSource(tmp_path / "db.sqlite", audit=True)
    c = _cache(ac, uid, src, shards=1)
    for i in range(30):
        c.write_back(f"k{i % 4}", i)

    class Broken(SQLiteSource):
        def apply_changes(self, changes: Sequence[Change]) -> Any:
            raise RuntimeError("crashed before commit")

    first = Flusher(ac, uid, Broken(tmp_path / "db.sqlite"), shards=1, consumer="same", batch=50)
    with pytest.raises(RuntimeError):
        first.step()
    for i in range(30, 40):
        c.write_back(f"k{i % 4}", i)
    # Same consumer name, no reclaiming (claim_idle far away): its own pending entries come first,
    # in batches of 10, before the newer ones.
    again = Flusher(ac, uid, src, shards=1, consumer="same", batch=10, claim_idle=600)
    assert again.drain(20) == 40
    log = src.audit_log()
    assert len(log) == 40, "nothing skipped: every change applied, in order"
    for k in range(4):
        ids = [tuple(map(int, e.split("-"))) for key, e, _ in log if key == f"k{k}"]
        assert ids == sorted(ids)
    assert src.items() == {f"k{k}": 36 + k for k in range(4)}


def test_flusher_run_loop_in_a_thread(acs: AdCache, uid: str, src: SQLiteSource) -> None:
    c = _cache(acs, uid, src)
    f = Flusher(acs, uid, src, shards=8, consumer="loop")
    stop = threading.Event()
    t = threading.Thread(target=f.run, args=(stop,), kwargs={"max_idle": 0.1})
    t.start()
    try:
        for i in range(50):
            c.write_back(f"k{i % 10}", i)
        deadline = time.monotonic() + 20
        while src.items() != {f"k{k}": 40 + k for k in range(10)}:
            assert time.monotonic() < deadline, "the loop did not flush in time"
            time.sleep(0.05)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and f.backlog() == 0


def test_flusher_recreates_lost_groups(ac: AdCache, uid: str, src: SQLiteSource) -> None:
    c = _cache(ac, uid, src, shards=2)
    f = Flusher(ac, uid, src, shards=2, consumer="f")
    c.write_back("a", 1)
    f.drain(10)
    ac.redis.delete(*c.space.streams())  # what a restart without persistence leaves
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        f.step()
    c.write_back("a", 2)
    f.drain(10)
    assert src.load("a") == 2


def test_sink_skips_redelivered_and_older_changes(tmp_path: Path) -> None:
    src = SQLiteSource(tmp_path / "db.sqlite", audit=True)
    a = Change("k", "set", "a", "s", "100-0")
    b = Change("k", "set", "b", "s", "100-1")
    assert src.apply_changes([b, a]).applied == 2, (
        "applied in stream order whatever the batch order"
    )
    assert src.load("k") == "b"
    r = src.apply_changes([a, b, Change("k", "del", None, "s", "99-5")])
    assert (r.applied, r.skipped) == (0, 3)
    assert src.apply_changes([Change("k", "del", None, "s", "101-0")]).applied == 1
    assert src.load("k") is None
    assert src.apply_changes([b]).skipped == 1, "a delete keeps its id: no resurrection"
    assert [e for _, e, _ in src.audit_log()] == ["100-0", "100-1", "101-0"]


# ---- metrics ----


def test_metrics_registry(ac: AdCache, uid: str, src: CountingSource) -> None:
    c = StrategyCache(ac, uid, src)  # counters from the per-name registry
    src.save("m", 1)
    c.get("m")
    c.get("m")
    snap = all_metrics()[uid]
    assert snap["hit"] == 1 and snap["miss"] == 1 and snap["load"] == 1
    assert c.metrics.hit_rate() == 0.5


# ---- bad input changes nothing ----


def test_retried_lookup_keeps_its_own_lock(acs: AdCache, uid: str) -> None:
    sp = Space(uid, 2)
    assert acs.caches.get(sp, "k", "tok", lock_ttl_ms=5000).status == "load"
    # The same call again (a retry after a lost reply) still holds the lock; others wait.
    assert acs.caches.get(sp, "k", "tok", lock_ttl_ms=5000).status == "load"
    assert acs.caches.get(sp, "k", "other", lock_ttl_ms=5000).status == "wait"


def test_bad_input_changes_nothing(acs: AdCache, uid: str) -> None:
    sp = Space(uid, 4)
    vkey, lkey = sp.value_key("k"), sp.lock_key("k")
    node = _node_of(acs, vkey)
    assert acs.caches.get(sp, "k", "tok", lock_ttl_ms=5000).status == "load"

    def raw(fn: str, ks: Sequence[str], *args: str | int) -> Call[Any]:
        return Call(fn, tuple(ks), tuple(args), lambda r: r)

    with pytest.raises(BadArgumentError):
        acs.run(raw("ac_cache_fill", [vkey, lkey], "tok", "value", '"x"', "0", "0", "1"))
    with pytest.raises(BadArgumentError):
        acs.run(raw("ac_cache_fill", [vkey, lkey], "tok", "maybe", '"x"', "100", "0", "1"))
    other_lock = sp.lock_key("k") + "x"
    with pytest.raises(BadKeyError):
        acs.run(
            raw("ac_cache_set", [vkey, other_lock, sp.writer_key("k")], "t", "value", "1", 9, 0)
        )
    assert node.exists(vkey) == 0 and node.get(lkey) in (b"tok", "tok")
    stream = sp.stream(sp.shard("k"))
    with pytest.raises(BadArgumentError):
        acs.run(raw("ac_cache_wb_write", [vkey, lkey, stream], "upsert", '"x"', "100", "0"))
    tag_key = sp.tag_keys("k", ["t"])[0]
    node.set(tag_key, "string")
    with pytest.raises(CorruptStateError):
        acs.caches.wb_write(sp, "k", '"x"', ttl_ms=1000, grace_ms=0, tags=["t"])
    assert node.exists(vkey, stream) == 0, "no value, no change record"
    assert node.get(lkey) in (b"tok", "tok")
    with pytest.raises(BadArgumentError):
        sp.value_key("a{b}")
    with pytest.raises(BadArgumentError):
        Space("bad{name}")


def test_get_many_bad_input_takes_no_lock(acs: AdCache, uid: str) -> None:
    sp = Space(uid, 1)
    v1, v2, l1, l2 = sp.value_key("a"), sp.value_key("b"), sp.lock_key("a"), sp.lock_key("b")
    node = _node_of(acs, v1)

    def raw(ks: Sequence[str], *args: str | int) -> Call[Any]:
        return Call("ac_cache_get_many", tuple(ks), tuple(args), lambda r: r)

    with pytest.raises(ArityError):
        acs.run(raw([v1, v2, l1], "tok", 5000))
    with pytest.raises(BadKeyError):
        acs.run(raw([v1, v2, l2, l1], "tok", 5000))
    with pytest.raises(BadArgumentError):
        acs.run(raw([v1, v2, l1, l2], "tok", 0))
    many = [sp.value_key(f"k{i}") for i in range(501)] + [sp.lock_key(f"k{i}") for i in range(501)]
    with pytest.raises(LimitExceededError):
        acs.run(raw(many, "tok", 5000))
    assert node.exists(l1, l2, sp.lock_key("k0")) == 0
    reply = acs.run(raw([v1, v2, l1, l2], "tok", 5000))
    assert [x.decode() if isinstance(x, bytes) else x for x in reply] == ["load", "", 0, 0] * 2
    assert node.exists(l1, l2) == 2


def test_ack_with_unknown_group_deletes_nothing(ac: AdCache, uid: str, src: SQLiteSource) -> None:
    c = _cache(ac, uid, src, shards=1)
    eid = c.write_back("k", 1)
    stream = c.space.stream(0)
    with pytest.raises(NotFoundError):
        ac.caches.wb_ack(stream, "no-such-group", [eid])
    with pytest.raises(BadArgumentError):
        ac.caches.wb_ack(stream, "g", ["not-an-id"])
    ac.redis.xgroup_create(stream, "g", id="0")
    vkey = c.space.value_key("k")
    with pytest.raises(ArityError):
        ac.caches.wb_ack(stream, "g", [], [vkey])
    other = Space(uid + "x", 1).value_key("k")
    with pytest.raises(CrossSlotError):
        ac.caches.wb_ack(stream, "g", [eid], [other])
    assert ac.redis.xlen(stream) == 1 and ac.redis.pttl(vkey) == -1, "nothing acked or unpinned"
    # Never delivered to g, so XACK counts nothing; the record is still deleted as committed.
    assert ac.caches.wb_ack(stream, "g", [eid], [vkey]) == 0
    assert ac.redis.xlen(stream) == 0 and ac.redis.pttl(vkey) > 0


# ---- asyncio ----


async def test_async_strategies(aacs: aio.AdCache, uid: str, src: CountingSource) -> None:
    src.save("a", [1])
    c = AsyncStrategyCache(aacs, uid, src, CachePolicy(shards=8), metrics=StrategyMetrics(uid))
    assert await c.get("a") == [1] and await c.get("a") == [1]
    assert src.loads("a") == 1
    assert await c.get("nope") is None and await c.get("nope") is None
    assert src.loads("nope") == 1
    await c.write_through("b", {"x": 1}, tags=["t"])
    assert await c.get("b") == {"x": 1} and src.load("b") == {"x": 1}
    await c.write_around("a", [2])
    assert await c.get("a") == [2]
    assert await c.invalidate_tag("t") == 1
    await c.write_back("c", "wb")
    assert await c.get("c") == "wb" and src.load("c") is None
    await c.delete_through("b")
    assert await c.get("b") is None and src.load("b") is None
    assert await c.get_many(["a", "c", "nope"]) == {"a": [2], "c": "wb"}
    await c.delete_back("a")
    f = AsyncFlusher(aacs, uid, src, shards=8, consumer="af", metrics=c.metrics)
    assert await f.drain(20) == 2
    assert src.load("c") == "wb" and src.load("a") is None
    assert await f.backlog() == 0 and c.metrics.snapshot()["flush"] == 2


async def test_async_stampede_one_load(lib_standalone: Any, uid: str, tmp_path: Path) -> None:
    import asyncio

    source = CountingSource(tmp_path / "db.sqlite", delay=0.3)
    source.save("cold", 7)
    clients = [await aio.AdCache.from_url(lib_standalone.url, cluster=False) for _ in range(50)]
    try:
        caches = [AsyncStrategyCache(a, uid, source, STAMPEDE) for a in clients]
        results = await asyncio.gather(*(c.get("cold") for c in caches))
    finally:
        for a in clients:
            await a.aclose()
    assert results == [7] * 50
    assert source.loads("cold") == 1
