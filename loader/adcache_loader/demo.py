"""`adcache demo`: deploy the library and walk through what it does, printing each step.

With no URL it starts a throwaway redis-server (the embedded default) and stops it at the end.
Each domain adds its scene to SCENES; a scene gets a connected client and the console.
"""

from __future__ import annotations

import time
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
        cache.sessions.create(sid, "bad{user}", idle_ttl=30, max_lifetime=600)
    except AdCacheError as e:
        console.print(f"bad input is refused with a typed error: [yellow]{type(e).__name__}[/] {e}")
    cache.sessions.delete(sid)


def scene_stats(cache: AdCache, console: Console) -> None:
    from adcache.money import to_micros
    from adcache.stats import Event

    cid = f"demo-{uuid.uuid4().hex[:8]}"
    cpm = to_micros("2.50") // 1000  # a 2.50 CPM impression costs 2,500 micros
    events = [
        Event(impressions=1, cost_micros=cpm, user_id=f"user-{i % 40}", event_id=f"imp-{i}")
        for i in range(100)
    ]
    events += [Event(clicks=1, user_id=f"user-{i}", event_id=f"clk-{i}") for i in range(4)]
    events += [Event(conversions=1, revenue_micros=to_micros("1.20"), event_id="conv-0")]
    r = cache.stats.record(cid, events)
    console.print(
        f"recorded {r.recorded} events of campaign [bold]{cid}[/] in one call (hour {r.hour}, day {r.day})"
    )
    retry = cache.stats.record(cid, events[:10])
    console.print(
        f"a retried delivery of 10 events counts nothing: {retry.duplicates} duplicates dropped"
    )
    s = cache.stats.summary(cid, days=7)
    console.print(
        f"last 7 days in one call: {s.impressions} impressions, {s.clicks} clicks, "
        f"{s.conversions} conversion, cost {s.cost}, reach ≈{s.reach} users; "
        f"CTR {s.ctr:.2%}, CPC {s.cpc}, CPM {s.cpm}, ROAS {s.roas:.3f}"
    )
    empty = cache.stats.summary(f"{cid}-new", days=7)
    console.print(f"a campaign with no impressions has CTR {empty.ctr} (no division by zero)")
    h = cache.monitor.health()
    console.print(
        f"cache health over {len(h.nodes)} node(s): hit rate "
        f"{'n/a' if h.hit_rate is None else f'{h.hit_rate:.1%}'}, "
        f"adcache counters {cache.monitor.counters().totals}"
    )


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


def scene_decide(cache: AdCache, console: Console) -> None:
    """A short simulation: a few hundred ad requests through the whole decision path."""
    from adcache_loader.simulate import run_simulation, summary_rows

    url = cache.redis.get_connection_kwargs() if not cache.is_cluster else None
    target = f"redis://{url.get('host', '127.0.0.1')}:{url.get('port', 6379)}" if url else None
    if target is None:
        console.print("(the decision scene runs on a standalone server)")
        return
    report = run_simulation(
        target, cluster=False, requests=300, users=80, campaigns=20, threads=4, seed=3
    )
    table = Table(title="ad decisions: 300 requests")
    table.add_column("figure")
    table.add_column("value")
    for name, value in summary_rows(report):
        table.add_row(name, value)
    console.print(table)


SCENES: list[tuple[str, Callable[[AdCache, Console], None]]] = [
    ("sessions", scene_sessions),
    ("stats", scene_stats),
    ("users", scene_users),
    ("auctions", scene_auctions),
    ("caps", scene_caps),
    ("campaigns", scene_campaigns),
    ("strategies", scene_strategies),
    ("decide", scene_decide),
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
