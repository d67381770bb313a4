"""The hot-path operations of an ad request, defined once and used three ways: side by side in one
process (`bench_hotpath`), from many processes (`multiproc`), and in the soak test.

Every operation is ONE function call per operation for adcache (a cycle of calls where the domain
needs several, e.g. reserve then commit), so "ours / no-op FCALL" compares like with like. Each
operation also has the predecessor's way of doing the same step (client-side logic, one round trip
per step, floats and JSON), written against the same cluster.

Entities are seeded once under a run tag; a variant only needs the tag and its own `prefix` (ids it
creates are built from it, so processes never collide).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.cluster import RedisCluster

from adcache import AdCache, Call, auctions, budgets, caps, profiles, segments, sessions, stats
from adcache import _generated as keys
from adcache._core import raw
from adcache.auctions import Bid, Imp
from adcache.campaigns import CampaignSpec
from adcache.caps import Candidate, CapRule
from adcache.stats import Event
from adcache.targeting import Targeting

N_USERS = 200
N_CAMPAIGNS = 10
RULES = (
    CapRule.fixed("campaign", "day", 1_000_000),
    CapRule.fixed("campaign", "hour", 1_000_000),
    CapRule.fixed("advertiser", "week", 1_000_000),
)
CANDIDATES = tuple(
    Candidate(f"camp-{i:02d}", RULES, advertiser_id=f"adv-{i % 3}") for i in range(N_CAMPAIGNS)
)
IMPS = [Imp("1", floor="1.00")]
BIDS = [
    Bid(f"b{n}", "1", seat, price, cid=cid)
    for n, (seat, cid, price) in enumerate(
        (("seat-a", "c-1", "2.50"), ("seat-b", "c-2", "3.00"), ("seat-c", "c-3", "2.80"))
    )
]
# The predecessor's scripts, as they ran.
PRED_CAP = """
local current = redis.call('GET', KEYS[1])
if current == false then current = 0 else current = tonumber(current) end
if current >= tonumber(ARGV[1]) then return 0 end
redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""
PRED_BID = """
local cur = redis.call('HGET', KEYS[1], 'highest_bid')
if cur == false then cur = 0 else cur = tonumber(cur) end
if tonumber(ARGV[1]) > cur then
    redis.call('HSET', KEYS[1], 'highest_bid', ARGV[1])
    redis.call('HSET', KEYS[1], 'winning_campaign', ARGV[2])
    redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
    return 1
end
return 0
"""
NOOP = Call("ac_version", (), (), raw)
SCRIPT_CALLS = ("evalsha", "eval")


def user(tag: str, i: int) -> str:
    return f"hp-{tag}-u{i % N_USERS}"


def session(tag: str, i: int) -> str:
    return f"hp-{tag}-s{i % N_USERS}"


def campaign(tag: str, i: int) -> str:
    return f"hp-{tag}-c{i % N_CAMPAIGNS}"


def _old(kind: str, id_: str) -> str:
    return f"old:{kind}:{id_}"


def seed_user_calls(u: str, s: str, i: int, now_ms: int) -> list[Call[Any]]:
    """A seeded user `u`: a profile, a session `s` and four segments (of 20, by `i`)."""
    profile = profiles.set_call(
        u,
        idle_ttl=3600,
        score_milli=75_500,
        segment="high_value",
        interests=["tech", "gaming", "sports"],
        demographics={"age": "28", "location": "Seoul"},
    )
    session_ = sessions.create_call(s, u, idle_ttl=3600, max_lifetime=7200)
    joins = [segments.join_call(u, f"seg{(i + j) % 20}", now_ms + 3_600_000) for j in range(4)]
    return [profile, session_, *joins]


def backfill_stats_day(r: Any, cid: str, label: str, *, users: int = 100) -> None:
    """One daily stats bucket and its reach written directly, as a day of traffic would leave
    them (the library only records into the current hour and day, so a benchmark cannot
    backdate through it). `r` is a client or a pipeline."""
    k, rk = keys.stats_day(cid, label), keys.stats_reach_day(cid, label)
    r.hset(
        k,
        mapping={
            "impressions": 1000,
            "clicks": 20,
            "conversions": 2,
            "cost_micros": 1_500_000,
            "revenue_micros": 4_000_000,
        },
    )
    r.expire(k, 86400 * 2)
    r.pfadd(rk, *[f"u{n}" for n in range(users)])
    r.expire(rk, 86400 * 2)


def _days(n: int) -> list[datetime]:
    now = datetime.now(UTC)
    return [now - timedelta(days=d) for d in range(n)]


def seed(ac: AdCache, r: redis.Redis | RedisCluster, tag: str) -> None:
    """Create the users, sessions, campaigns and 7 days of stats the operations read, ours and the
    predecessor's (plain keys, floats, JSON)."""
    now_ms = int(time.time() * 1000)
    now_iso = datetime.now().isoformat()
    calls: list[Call[Any]] = []
    for i in range(N_USERS):
        calls += seed_user_calls(user(tag, i), session(tag, i), i, now_ms)
    ac.run_many(calls)
    calls = []
    for i in range(N_USERS):
        s = session(tag, i)
        for j in range(5):
            cats = [f"cat{(i + j) % 7}", f"cat{(i + j) % 11}"]
            calls.append(sessions.track_call(s, categories=cats, keywords=["kw"], referrer="r"))
        calls.append(caps.record_call(user(tag, i), f"seed-{i}", CANDIDATES[0], dedupe_ttl=60))
    ac.run_many(calls)
    for j in range(N_CAMPAIGNS):
        ac.campaigns.set(
            campaign(tag, j),
            CampaignSpec(
                "bench-adv",
                bid_cpm_micros=2_000_000,
                budget_micros=10**14,
                start_ms=now_ms - 1000,
                end_ms=now_ms + 6 * 3_600_000,
                targeting=Targeting.of([f"hp-{tag}"]),
            ),
        )
    # 7 days of stats per campaign, ours written directly (ours cannot backdate), and the old ones.
    for j in range(N_CAMPAIGNS):
        cid = campaign(tag, j)
        for d in _days(7):
            backfill_stats_day(r, cid, d.strftime("%Y%m%d"))
            ok = f"stats:{cid}:{d.strftime('%Y-%m-%d')}"
            r.hset(ok, mapping={"impressions": 1000, "clicks": 20, "cost": 1.5, "revenue": 4.0})
            r.expire(ok, 86400 * 2)
        r.hset(_old("campaign", cid), mapping={"budget": 1e9, "spent": 0.0, "status": "active"})
        r.expire(_old("campaign", cid), 86400)
    for i in range(N_USERS):
        u, s = user(tag, i), session(tag, i)
        pk = _old("profile", u)
        r.hset(
            pk,
            mapping={
                "user_id": u,
                "interests": json.dumps(["tech", "gaming", "sports"]),
                "demographics": json.dumps({"age": 28, "location": "Seoul"}),
                "behavior_score": 75.5,
                "last_activity": now_iso,
                "segment": "high_value",
            },
        )
        r.expire(pk, 3600)
        sk = _old("session", s)
        r.hset(sk, mapping={"session_id": s, "user_id": u, "last_activity": now_iso})
        r.expire(sk, 3600)
        r.rpush(_old("segments", u), *[f"seg{(i + j) % 20}" for j in range(4)])
        r.expire(_old("segments", u), 3600)


CallSource = Callable[[str], Callable[[], Call[Any]]]


@dataclass
class Op:
    """One hot-path operation: where its calls come from, and the predecessor's way."""

    name: str
    calls: CallSource  # prefix -> a generator of the next call
    predecessor: Callable[[redis.Redis | RedisCluster, str], Callable[[], object]]
    # Client requests per predecessor op from the server-side command counts: inner commands of
    # a script are counted by Redis too, so scripted steps count their EVALSHAs only.
    pred_requests: Callable[[dict[str, float]], float]
    pred_note: str = ""


def _counter() -> Iterator[int]:
    return itertools.count()


def _all(per: dict[str, float]) -> float:
    return sum(per.values())


def ops(tag: str) -> list[Op]:
    """The hot-path operations over the entities `seed(tag)` created."""

    def cycling(build: Callable[[int, str], Call[Any]]) -> CallSource:
        def source(prefix: str) -> Callable[[], Call[Any]]:
            n = _counter()
            return lambda: build(next(n), prefix)

        return source

    def pred(
        make: Callable[[redis.Redis | RedisCluster, Iterator[int], str], object],
    ) -> Callable[[redis.Redis | RedisCluster, str], Callable[[], object]]:
        def bind(r: redis.Redis | RedisCluster, prefix: str) -> Callable[[], object]:
            n = _counter()
            return lambda: make(r, n, prefix)

        return bind

    # ---- predecessor steps ----
    def p_session_get(r: Any, n: Iterator[int], _p: str) -> object:
        d = r.hgetall(_old("session", session(tag, next(n))))
        return datetime.fromisoformat(d[b"last_activity"].decode())

    def p_track(r: Any, n: Iterator[int], _p: str) -> None:
        s = session(tag, next(n))
        k, h = _old("session", s), _old("history", s)
        r.hset(k, "last_activity", datetime.now().isoformat())
        r.expire(k, 1800)
        r.lpush(h, json.dumps({"t": time.time(), "c": ["cat1", "cat2"], "k": ["kw"], "r": "x"}))
        r.ltrim(h, 0, 49)
        r.expire(h, 1800)

    def p_profile_get(r: Any, n: Iterator[int], _p: str) -> object:
        d = r.hgetall(_old("profile", user(tag, next(n))))
        return (
            json.loads(d[b"interests"]),
            json.loads(d[b"demographics"]),
            float(d[b"behavior_score"]),
        )

    def p_activity(r: Any, n: Iterator[int], _p: str) -> None:
        k = _old("profile", user(tag, next(n)))
        r.hset(k, "last_activity", datetime.now().isoformat())
        cur = r.hget(k, "behavior_score")
        if cur:
            r.hset(k, "behavior_score", float(cur) + 0.25)

    def p_segments(r: Any, n: Iterator[int], _p: str) -> object:
        return sorted({x.decode() for x in r.lrange(_old("segments", user(tag, next(n))), 0, -1)})

    cap_scripts: dict[int, Any] = {}

    def cap_script(r: Any) -> Any:
        if id(r) not in cap_scripts:
            cap_scripts[id(r)] = r.register_script(PRED_CAP)
        return cap_scripts[id(r)]

    def p_check(r: Any, n: Iterator[int], _p: str) -> None:
        u, sc = user(tag, next(n)), cap_script(r)
        for c in CANDIDATES:  # one script call per campaign, as the old FrequencyCapManager
            sc(keys=[f"freq:cap:{u}:{c.campaign_id}"], args=[1_000_000, 86400, time.time()])

    def p_record(r: Any, n: Iterator[int], _p: str) -> None:
        u = user(tag, next(n))
        cap_script(r)(keys=[f"freq:cap:{u}:camp-00"], args=[1_000_000, 86400, time.time()])

    def p_spend(r: Any, n: Iterator[int], _p: str) -> object:
        i = next(n)
        k = _old("campaign", campaign(tag, i // 2))
        if i % 2 == 0:  # check ...
            budget, spent = r.hmget(k, "budget", "spent")
            return float(spent or 0) + 0.002 <= float(budget or 0)
        # ... then spend (a race window between the two)
        return r.hincrbyfloat(k, "spent", 0.0015)

    bid_scripts: dict[int, Any] = {}

    def p_auction(r: Any, n: Iterator[int], prefix: str) -> None:
        i = next(n)
        key = f"rtb:{prefix}-{i // 3}"
        step = i % 3
        if step == 0:
            pipe = r.pipeline()
            pipe.hset(
                key,
                mapping={
                    "floor_price": 1.0,
                    "highest_bid": 0,
                    "winning_campaign": "",
                    "created_at": datetime.now().isoformat(),
                },
            )
            pipe.expire(key, 120)
            pipe.execute()
        elif step == 1:
            if id(r) not in bid_scripts:
                bid_scripts[id(r)] = r.register_script(PRED_BID)
            for b in BIDS:
                bid_scripts[id(r)](keys=[key], args=[float(b.price), b.cid or "", 120])
        else:
            float(r.hgetall(key)[b"highest_bid"])
            r.delete(key)

    def p_stats_record(r: Any, n: Iterator[int], _p: str) -> None:
        k = f"stats:{campaign(tag, next(n))}:{datetime.now().strftime('%Y-%m-%d')}"
        r.hincrbyfloat(k, "impressions", 1)
        r.expire(k, 86400 * 7)
        r.hincrbyfloat(k, "cost", 0.0015)
        r.expire(k, 86400 * 7)

    def p_summary(r: Any, n: Iterator[int], _p: str) -> object:
        cid = campaign(tag, next(n))
        s = {"impressions": 0.0, "clicks": 0.0, "cost": 0.0, "revenue": 0.0}
        for d in _days(7):
            for k, v in r.hgetall(f"stats:{cid}:{d.strftime('%Y-%m-%d')}").items():
                if k.decode() in s:
                    s[k.decode()] += float(v)
        s["ctr"] = s["clicks"] / s["impressions"] if s["impressions"] else 0.0
        s["cpc"] = s["cost"] / s["clicks"] if s["clicks"] else 0.0
        return s

    # ---- our calls ----
    def c_auction(i: int, prefix: str) -> Call[Any]:
        aid = f"{prefix}-{i // 3}"
        step = i % 3
        if step == 0:
            return auctions.create_call(aid, IMPS, tmax_ms=5000, exp=1, ttl=10)
        if step == 1:
            return auctions.bid_many_call(aid, BIDS)
        return auctions.close_call(aid)

    def c_spend(i: int, prefix: str) -> Call[Any]:
        cid = campaign(tag, i // 2)
        rid = f"{prefix}-{i // 2}"
        if i % 2 == 0:
            return budgets.reserve_call(cid, rid, 2_000, 10)
        return budgets.commit_call(cid, rid, 1_500)

    scripted = lambda per: sum(per.get(k, 0.0) for k in SCRIPT_CALLS)  # noqa: E731

    return [
        Op(
            "session get",
            cycling(lambda i, _p: sessions.get_call(session(tag, i))),
            pred(p_session_get),
            _all,
            "HGETALL",
        ),
        Op(
            "session track (context)",
            cycling(
                lambda i, _p: sessions.track_call(
                    session(tag, i), categories=["cat1", "cat2"], keywords=["kw"], referrer="x"
                )
            ),
            pred(p_track),
            _all,
            "HSET, EXPIRE, LPUSH JSON, LTRIM, EXPIRE",
        ),
        Op(
            "profile get",
            cycling(lambda i, _p: profiles.get_call(user(tag, i))),
            pred(p_profile_get),
            _all,
            "HGETALL + JSON + float",
        ),
        Op(
            "profile activity",
            cycling(lambda i, _p: profiles.activity_call(user(tag, i), 250)),
            pred(p_activity),
            _all,
            "HSET, HGET, HSET of a float",
        ),
        Op(
            "segment list",
            cycling(lambda i, _p: segments.of_call(user(tag, i))),
            pred(p_segments),
            _all,
            "LRANGE + dedupe in the client",
        ),
        Op(
            "freqcap check ×10",
            cycling(lambda i, _p: caps.check_call(user(tag, i), CANDIDATES)),
            pred(p_check),
            scripted,
            "one EVALSHA per campaign",
        ),
        Op(
            "freqcap record",
            cycling(
                lambda i, p: caps.record_call(
                    user(tag, i), f"{p}-{i}", CANDIDATES[0], dedupe_ttl=60
                )
            ),
            pred(p_record),
            scripted,
            "one EVALSHA, one window",
        ),
        Op(
            "budget reserve / commit",
            cycling(c_spend),
            pred(p_spend),
            _all,
            "HMGET check / HINCRBYFLOAT spend (racy)",
        ),
        Op(
            "auction create / bid×3 / close",
            cycling(c_auction),
            pred(p_auction),
            # the create pipeline is one request per cycle, like the HGETALL
            lambda per: per.get("evalsha", 0.0) + 2 * per.get("hgetall", 0.0) + per.get("del", 0.0),
            "pipeline create / 3 EVALSHA / HGETALL+DEL, floats",
        ),
        Op(
            "stats record",
            cycling(
                lambda i, p: stats.record_call(
                    campaign(tag, i),
                    [
                        Event(
                            impressions=1,
                            cost_micros=1_500,
                            user_id=f"u{i % 5000}",
                            event_id=f"{p}-{i}",
                        )
                    ],
                )
            ),
            pred(p_stats_record),
            _all,
            "2×(HINCRBYFLOAT + EXPIRE)",
        ),
        Op(
            "stats summary 7 days",
            cycling(lambda i, _p: stats.summary_call(campaign(tag, i), "day", 7)),
            pred(p_summary),
            _all,
            "7×HGETALL summed in the client; ours also counts unique reach (PFCOUNT of 7 days)",
        ),
        Op(
            "stats summary 7 days, sums only",
            cycling(lambda i, _p: stats.summary_call(campaign(tag, i), "day", 7, reach=False)),
            pred(p_summary),
            _all,
            "the predecessor's scope: the same sums, no reach",
        ),
    ]


def plain_call(rc: RedisCluster | redis.Redis, call: Call[Any]) -> Any:
    """The same call through plain redis-py `fcall`/`fcall_ro` (its own slot lookup), parsed."""
    fn = rc.fcall_ro if call.readonly else rc.fcall
    return call.parse(fn(call.function, len(call.keys), *call.keys, *call.args))


# ---- the mixed ad-serving request: 5 sequential rounds, ours only ----


def mixed_request(ac: AdCache, tag: str, prefix: str) -> Callable[[], None]:
    """One ad request: read the user's signals, check caps, spend on the winner, record."""
    n = _counter()

    def request() -> None:
        i = next(n)
        u, s, c = user(tag, i * 7), session(tag, i * 7), campaign(tag, i)
        rid = f"{prefix}-{i}"
        ac.run_many([profiles.get_call(u), sessions.context_call(s), segments.of_call(u)])
        ac.run(caps.check_call(u, CANDIDATES))
        if not ac.run(budgets.reserve_call(c, rid, 2_000, 10)).ok:
            return
        ac.run(budgets.commit_call(c, rid, 1_500))
        ac.run_many(
            [
                caps.record_call(u, rid, CANDIDATES[i % N_CAMPAIGNS], dedupe_ttl=60),
                stats.record_call(
                    c, [Event(impressions=1, cost_micros=1_500, user_id=u, event_id=rid)]
                ),
                sessions.track_call(s, kind="request", categories=["cat1"]),
            ]
        )

    return request
