"""`adcache demo`: deploy the library and walk through what it does, printing each step.

With no URL it starts a throwaway redis-server (the embedded default) and stops it at the end.
Each domain adds its scene to SCENES; a scene gets a connected client and the console.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from decimal import Decimal

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


def scene_users(cache: AdCache, console: Console) -> None:
    tag = uuid.uuid4().hex[:8]
    uid, sid, seg = f"demo-user-{tag}", f"demo-sess-{tag}", f"demo-seg-{tag}"
    w = cache.profiles.set(
        uid, idle_ttl=600, score_milli=75_500, interests=["tech", "gaming"], segment="high_value"
    )
    console.print(f"profile [bold]{uid}[/] version {w.version}, score 75.500 (stored as 75500)")
    a = cache.profiles.activity(uid, 1_250)
    console.print(
        f"activity +1.250 in one atomic call: score {Decimal(a.score_milli) / 1000}, TTL refreshed"
    )
    try:
        cache.profiles.patch(uid, expected_version=7, segment="stale")
    except AdCacheError as e:
        console.print(f"a patch against an old version is refused: [yellow]{type(e).__name__}[/]")
    m = cache.segments.add(uid, seg, ttl=3600)
    console.print(
        f"joined segment {seg} until {m.expires_at_ms}; segments: {[x.segment_id for x in cache.segments.of(uid)]}"
    )
    cache.sessions.create(sid, uid, idle_ttl=1800, max_lifetime=7200, index=True)
    cache.sessions.track(
        sid, categories=["sports", "cars"], keywords=["tyres"], referrer="search.example"
    )
    cache.sessions.track(sid, categories=["sports"], keywords=["golf"])
    ctx = cache.sessions.context(sid, half_life=600)
    if ctx is not None:
        console.print(
            f"session context (weights in thousandths): categories {ctx.categories}, keywords {ctx.keywords}"
        )
    for _ in range(3):
        imp = cache.sessions.record_impression(sid, cap=2)
        console.print(
            f"impression: {'allowed' if imp.allowed else 'refused'} ({imp.reason}), {imp.session_impressions} in session"
        )
    console.print(f"revoked {cache.sessions.revoke_all(uid)} live session(s) of {uid}")
    cache.segments.remove(uid, seg)


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("users", scene_users),
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
