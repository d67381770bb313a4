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


def scene_campaigns(cache: AdCache, console: Console) -> None:
    import time

    from adcache.campaigns import CampaignSpec
    from adcache.targeting import Targeting

    cid, tag = f"demo-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex[:6]
    sports = f"sports{tag}"
    now = int(time.time() * 1000)
    spec = CampaignSpec(
        "demo-advertiser",
        bid_cpm_micros=2_000_000,  # 2.00 CPM: an impression costs at most 2000 micros
        budget_micros=5_000,
        start_ms=now - 1000,
        end_ms=now + 3_600_000,
        targeting=Targeting.of([sports], ["KR"], ["mobile"]),
    )
    w = cache.campaigns.create(cid, spec)
    console.print(f"campaign [bold]{cid}[/] v{w.version}, indexed in shards {', '.join(w.added)}")

    def query() -> list[str]:
        return cache.targeting.query(interests=[sports, "news"], location="KR", device="mobile")

    console.print(f"query for a sports fan in KR on mobile: {query()}")
    for n in range(1, 5):
        r = cache.budgets.reserve(cid, f"auction-{n}", 2_000, 10)
        if not r.ok:
            console.print(f"auction-{n}: reserve refused ([yellow]{r.reason}[/])")
            continue
        c = cache.budgets.commit(cid, f"auction-{n}", 1_800)
        again = cache.budgets.commit(cid, f"auction-{n}", 1_800)
        console.print(
            f"auction-{n}: reserved 2000, committed {c.charged_micros} (released "
            f"{c.released_micros}); retried commit charged again? {not again.replay}; "
            f"spent {c.spent_micros}/{spec.budget_micros}"
            + (f", [red]exhausted ({c.exhausted})[/]" if c.exhausted else "")
        )
    got = cache.campaigns.get(cid)
    if got is not None:
        console.print(f"servable: {got.servable} (reason: {got.reason or '-'})")
    console.print(f"query again: {query()} (out of the index at once)")
    cache.campaigns.remove(cid)


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("campaigns", scene_campaigns),
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
