"""Caching strategies: the cache-aside hit path (one `ac_cache_get` FCALL + JSON decode) against
the predecessor-style read (plain GET + JSON decode, no stampede protection, no stale/negative
handling) and the no-op `FCALL_RO ac_version`; a batch of 100 hits (`get_many`) against MGET; and
the miss path (load from SQLite + fill) against the predecessor-style miss (GET, SELECT, SET EX)."""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path

from adcache.strategies import CachePolicy, SQLiteSource, StrategyCache, StrategyMetrics
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

N_KEYS = 1000


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    ac = env.adcache()
    r = ac.redis
    name = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        source = SQLiteSource(Path(tmp) / "bench.sqlite", "campaigns", synchronous="NORMAL")
        rows = {
            f"c{i}": {"id": i, "bid_micros": 1_000 * i, "geo": ["FR", "DE"]} for i in range(N_KEYS)
        }
        for k, v in rows.items():
            source.save(k, v)
        cache = StrategyCache(
            ac, name, source, CachePolicy(ttl=3600, shards=16), metrics=StrategyMetrics(name)
        )
        plain = {k: f"bench:plain:{name}:{k}" for k in rows}
        for k, v in rows.items():
            cache.get(k)  # warm: every key cached
            r.set(plain[k], json.dumps(v), ex=3600)
        ids = list(rows)
        i = 0

        def ours_hit() -> None:
            nonlocal i
            i += 1
            cache.get(ids[i % N_KEYS])

        def plain_hit() -> None:
            nonlocal i
            i += 1
            json.loads(r.get(plain[ids[i % N_KEYS]]))

        res = side_by_side(
            "strategies hit",
            {
                "cache-aside get (adcache)": ours_hit,
                "predecessor-style GET + json": plain_hit,
                "FCALL_RO ac_version (no-op)": lambda: r.execute_command(
                    "FCALL_RO", "ac_version", 0
                ),
            },
            calls=env.calls(20000),
        )
        o, p, n = (
            res["cache-aside get (adcache)"],
            res["predecessor-style GET + json"],
            res["FCALL_RO ac_version (no-op)"],
        )
        o.note = f"{ratio(o, p):.2f}× GET+json, {ratio(o, n):.2f}× no-op FCALL"
        o.round_trips_per_op = round_trips(commands_per_op([r], ours_hit), scripted=True)
        p.round_trips_per_op = round_trips(commands_per_op([r], plain_hit), scripted=False)
        out += res.values()

        # ---- 100 hits at once ----
        batch = [ids[(k * 7) % N_KEYS] for k in range(100)]
        plain_batch = [plain[k] for k in batch]

        def ours_many() -> None:
            cache.get_many(batch)

        def plain_many() -> None:
            [json.loads(v) for v in r.mget(plain_batch)]

        res = side_by_side(
            "strategies hit×100",
            {"get_many (adcache)": ours_many, "predecessor-style MGET + json": plain_many},
            calls=env.calls(400),
            batch=100,
        )
        o, p = res["get_many (adcache)"], res["predecessor-style MGET + json"]
        o.note = f"{ratio(o, p):.2f}× MGET+json (one FCALL per shard, one pipeline)"
        o.round_trips_per_op = round_trips(commands_per_op([r], ours_many, ops=20), scripted=True)
        p.round_trips_per_op = round_trips(commands_per_op([r], plain_many, ops=20), scripted=False)
        out += res.values()

        # ---- the miss path: load from SQLite and fill ----
        j = 0

        def ours_miss() -> None:
            nonlocal j
            j += 1
            k = ids[j % N_KEYS]
            cache.invalidate(k)
            cache.get(k)

        def plain_miss() -> None:
            nonlocal j
            j += 1
            k = ids[j % N_KEYS]
            r.delete(plain[k])
            if r.get(plain[k]) is None:
                v = source.load(k)
                r.set(plain[k], json.dumps(v), ex=3600)

        res = side_by_side(
            "strategies miss (incl. invalidate)",
            {
                "read-through miss (adcache)": ours_miss,
                "predecessor-style GET/SELECT/SET": plain_miss,
            },
            calls=env.calls(3000),
        )
        o, p = res["read-through miss (adcache)"], res["predecessor-style GET/SELECT/SET"]
        o.note = f"{ratio(o, p):.2f}× predecessor-style; with stampede lock and negative caching"
        o.round_trips_per_op = round_trips(commands_per_op([r], ours_miss), scripted=True)
        p.round_trips_per_op = round_trips(commands_per_op([r], plain_miss), scripted=False)
        out += res.values()
        source.close()
    return out
