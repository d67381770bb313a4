"""`adcache demo`: deploy the library and walk through what it does, printing each step.

With no URL it starts a throwaway redis-server (the embedded default) and stops it at the end.
Each domain adds its scene to SCENES; a scene gets a connected client and the console.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import redis
from rich.console import Console
from rich.table import Table

from adcache import AdCache, AdCacheError
from adcache_loader import deploy as deploy_mod


def scene_sessions(cache: AdCache, console: Console) -> None:
    sid, uid = f"demo-{uuid.uuid4().hex[:8]}", "demo-user-1"
    s = cache.sessions.create(
        sid, uid, idle_ttl=30, max_lifetime=600, attributes={"site": "news.example"}
    )
    console.print(
        f"created session [bold]{sid}[/] for {uid}: idle TTL {s.idle_ttl_ms} ms, lifetime ends at {s.deadline_ms}"
    )
    t = cache.sessions.touch(sid)
    console.print(f"touched: expires at {t.expires_at_ms} (never after {t.deadline_ms})")
    try:
        cache.sessions.create(sid, uid, idle_ttl=-1, max_lifetime=600)
    except (AdCacheError, ValueError) as e:
        console.print(f"bad input is refused with a typed error: [yellow]{type(e).__name__}[/] {e}")
    cache.sessions.delete(sid)


def scene_strategies(cache: AdCache, console: Console) -> None:
    import random
    import tempfile
    from pathlib import Path

    from adcache.strategies import CachePolicy, Flusher, SQLiteSource, StrategyCache

    name = f"demo-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        db = SQLiteSource(Path(tmp) / "campaigns.sqlite", "campaigns")
        for i in range(50):
            db.save(f"cmp-{i}", {"id": i, "bid_micros": 10_000 * (i + 1)})
        c = StrategyCache(cache, name, db, CachePolicy(ttl=60, shards=4))
        rng = random.Random(7)
        reads = 1000
        for _ in range(reads):  # a skewed workload; ids past 49 do not exist (negative entries)
            c.get(f"cmp-{int(rng.paretovariate(1.1)) - 1}")
        m = c.metrics.snapshot()
        console.print(
            f"cache-aside over SQLite: {reads} reads, {m['load']} loads from the database, "
            f"{m['negative_hit']} answered by negative entries: [bold]hit rate "
            f"{c.metrics.hit_rate():.1%}[/]"
        )
        c.write_through("cmp-1", {"id": 1, "bid_micros": 99_000})
        console.print(f"write-through cmp-1: database {db.load('cmp-1')}, cache {c.get('cmp-1')}")
        c.write_back("cmp-2", {"id": 2, "bid_micros": 77_000})
        console.print(
            f"write-back cmp-2: cache {c.get('cmp-2')}, database still {db.load('cmp-2')}"
        )
        flushed = Flusher(cache, name, db, shards=4).drain(10)
        console.print(f"flusher committed {flushed} change(s): database {db.load('cmp-2')}")
        db.close()


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("strategies", scene_strategies),
]


def run_demo(url: str | None, console: Console) -> int:
    server = None
    if url is None:
        from adcache_loader.servers import RedisServer

        server = RedisServer()
        server.start()
        url = server.url
        console.print(
            f"started a throwaway redis-server {'.'.join(map(str, server.version))} at {url}"
        )
    try:
        statuses = deploy_mod.deploy(url)
        table = Table(title="deployed")
        for col in ("node", "role", "state", "version"):
            table.add_column(col)
        for st in statuses:
            table.add_row(st.node, st.role, st.state, st.version)
        console.print(table)
        cache = AdCache.from_url(url)
        try:
            for name, scene in SCENES:
                console.rule(name)
                scene(cache, console)
        finally:
            cache.close()
        return 0
    except (AdCacheError, redis.RedisError) as e:
        console.print(f"[red]demo failed:[/] {e}")
        return 1
    finally:
        if server is not None:
            server.stop()
            console.print("stopped the throwaway redis-server")
