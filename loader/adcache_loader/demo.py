"""`adcache demo`: deploy the library and walk through what it does, printing each step.

With no URL it starts a throwaway redis-server (the embedded default) and stops it at the end.
Each domain adds its scene to SCENES; a scene gets a connected client and the console.
"""

from __future__ import annotations

import time
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


def scene_caps(cache: AdCache, console: Console) -> None:
    from adcache.caps import Candidate, CapRule

    user = f"demo-{uuid.uuid4().hex[:8]}"
    daily = CapRule.fixed("campaign", "day", 2)
    adv_week = CapRule.fixed("advertiser", "week", 3)
    cands = [
        Candidate(f"spring-sale-{i}", [daily, adv_week], advertiser_id="acme") for i in range(3)
    ]
    console.print("caps: 2 a day per campaign, 3 a week for the advertiser acme")
    for n in range(6):
        allowed = [d for d in cache.caps.check(user, cands) if d.allowed]
        if not allowed:
            break
        winner = next(c for c in cands if c.campaign_id == allowed[0].campaign_id)
        r = cache.caps.record(user, f"imp-{n}", winner)
        again = cache.caps.record(user, f"imp-{n}", winner)  # a retry: counted once
        console.print(
            f"impression {n}: {winner.campaign_id} admitted={r.admitted}, "
            f"remaining={r.remaining}, retry duplicate={again.duplicate}"
        )
    for d in cache.caps.check(user, cands):
        rule, why = d.blocked_by, ""
        if rule is not None:
            until = "for good"
            if d.frees_at_ms is not None:
                until = "until " + time.strftime(
                    "%Y-%m-%d %H:%M UTC", time.gmtime(d.frees_at_ms / 1000)
                )
            why = f", blocked by the {rule.scope} {rule.window_token} cap {until}"
        console.print(f"{d.campaign_id}: allowed={d.allowed}{why}")
    for c in cache.caps.inspect(user):
        console.print(f"counter {c.scope} {c.entity_id} {c.window}: {c.count}")
    cache.caps.reset(user)


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("caps", scene_caps),
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
