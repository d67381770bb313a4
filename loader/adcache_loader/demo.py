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


def scene_auctions(cache: AdCache, console: Console) -> None:
    from adcache.auctions import Bid, Deal, Imp, cpm, notices

    aid = f"demo-{uuid.uuid4().hex[:8]}"
    cache.auctions.create(
        aid,
        [Imp("banner", floor="1.00", deals=(Deal("vip", "2.00", wseat=("dsp-a",)),))],
        tmax_ms=5000,
    )
    console.print(
        f"auction [bold]{aid}[/]: second price, floor 1.00 CPM, deal 'vip' at 2.00 for dsp-a"
    )
    bids = [
        Bid(
            "b1",
            "banner",
            "dsp-a",
            "2.40",
            deal_id="vip",
            cid="camp-7",
            crid="cr-7",
            nurl="https://dsp-a.example/win?p=${AUCTION_PRICE}",
        ),
        Bid("b2", "banner", "dsp-b", "1.90", lurl="https://dsp-b.example/loss?r=${AUCTION_LOSS}"),
        Bid("b3", "banner", "dsp-c", "0.80"),
        Bid("b4", "banner", "dsp-c", "9.99", deal_id="vip"),
    ]
    for r in cache.auctions.bid_many(aid, bids):
        verdict = "accepted" if r.accepted else f"refused, loss reason {r.reason}"
        console.print(f"  bid {r.bid_id}: {verdict}")
    again = cache.auctions.bid(aid, bids[0])
    console.print(f"  bid b1 again: duplicate={again.duplicate}, nothing counted twice")
    res = cache.auctions.close(aid)
    w = res.winner("banner")
    if w is not None:
        console.print(
            f"closed: {w.seat} wins with {cpm(w.price_micros)} CPM (campaign {w.cid}), "
            f"pays {cpm(res.imp('banner').clearing_micros)} CPM (the higher of the runner-up and the deal floor, + 0.01)"
        )
    for n in notices(res):
        console.print(f"  {n.kind} notice for {n.bid_id}: {n.url}")
    first, second = (
        cache.auctions.bill(aid, "b1", seat="dsp-a"),
        cache.auctions.bill(aid, "b1", seat="dsp-a"),
    )
    console.print(
        f"billing notice: {first.status} {cpm(first.price_micros)} CPM, then {second.status}"
    )


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("auctions", scene_auctions),
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
