"""The hot-path function calls of the cost ledger and of its guard, defined once.

`python -m benchmarks.cost` (the ledger) and `tests/test_cost_budget.py` (the guard) both call
every public hot-path function through `HOT_CALLS`, so what the ledger times is exactly what the
guard counts. Each `HotCall` says how to build its i-th call and which calls must run before it
(`prepare`: a reservation before a commit, an auction before its bids); those run before the
counters are read, so they are never part of the measured call.

Calls are built with the client's own call builders (the arguments the client really sends) and
sent raw (`execute_command`), so the server's work is what is measured, not the client's parsing.

Counting (`inner_per_call`, `exact_inner`) reads `INFO commandstats` before and after: Redis counts
the commands a function runs inside itself too, so every row other than `fcall`/`fcall_ro` (and
the `info` of the reading itself) is an inner command.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from adcache import AdCache, auctions, budgets, caches, caps, profiles, segments, sessions, stats
from adcache import _generated as keys
from adcache.campaigns import CampaignSpec
from adcache.stats import Event
from adcache.targeting import Targeting
from benchmarks.hotpath import BIDS, CANDIDATES, IMPS, backfill_stats_day, seed_user_calls

Command = tuple[Any, ...]
NOOP: Command = ("FCALL_RO", "ac_version", 0)
FCALLS = frozenset({"fcall", "fcall_ro"})
# Rows that are not a function's inner commands: the counters' own reading, and what redis-py may
# send on a new connection.
NOT_INNER = frozenset({"info", "client|setinfo", "hello", "select", "ping", "echo"})
CACHE = caches.Space("cost", shards=16)
CACHE_TOKEN = "cost-token"
RESERVE_TTL_S = 600
AUCTION_TMAX_MS = 60_000
AUCTION_TTL_S = 600


@dataclass
class World:
    """Entities under one tag: `entities` users, sessions and cache keys, and as many campaigns."""

    r: redis.Redis
    tag: str
    entities: int = 100

    def user(self, i: int) -> str:
        return f"cost-{self.tag}-u{i % self.entities}"

    def session(self, i: int) -> str:
        return f"cost-{self.tag}-s{i % self.entities}"

    def campaign(self, i: int) -> str:
        return f"cost-{self.tag}-c{i % self.entities}"

    def cache_key(self, i: int) -> str:
        return f"cost-{self.tag}-k{i % self.entities}"

    def fresh(self, kind: str, i: int) -> str:
        """An id no earlier call used (reservations, auctions, impressions, events)."""
        return f"cost-{self.tag}-{kind}{i}"


def seed(ac: AdCache, world: World) -> None:
    """Create every entity the hot calls read: profiles, sessions with history, segment
    memberships, a cap counter per user, campaigns with budgets, 7 days of stats, cached values."""
    now_ms = int(time.time() * 1000)
    r, n = world.r, world.entities
    calls: list[Any] = []
    for i in range(n):
        calls += seed_user_calls(world.user(i), world.session(i), i, now_ms)
        calls.append(caches.write_begin_call(CACHE, world.cache_key(i), CACHE_TOKEN, ttl_ms=60_000))
    ac.run_many(calls)
    calls = []
    for i in range(n):
        for j in range(5):
            cats = [f"cat{(i + j) % 7}", f"cat{(i + j) % 11}"]
            calls.append(
                sessions.track_call(
                    world.session(i), categories=cats, keywords=["kw"], referrer="r"
                )
            )
        calls.append(caps.record_call(world.user(i), f"seed-{i}", CANDIDATES[0], dedupe_ttl=60))
        calls.append(
            caches.set_call(
                CACHE, world.cache_key(i), CACHE_TOKEN, "x" * 200, ttl_ms=3_600_000, grace_ms=60_000
            )
        )
    ac.run_many(calls)
    for j in range(n):
        cid = world.campaign(j)
        ac.campaigns.set(
            cid,
            CampaignSpec(
                "cost-adv",
                bid_cpm_micros=2_000_000,
                budget_micros=10**14,
                start_ms=now_ms - 1000,
                end_ms=now_ms + 6 * 3_600_000,
                targeting=Targeting.of([f"cost-{world.tag}"]),
            ),
        )
        # 7 days of stats (the library only records into the current hour and day)
        for d in range(7):
            backfill_stats_day(r, cid, (datetime.now(UTC) - timedelta(days=d)).strftime("%Y%m%d"))


def _pin_sweep(world: World, i: int, *, sweep: bool = False) -> Command:
    """Budget writes reclaim expired reservations at most every 250 ms per campaign: a busy
    campaign pays that sweep once in hundreds of calls, a quiet one on nearly every call. Setting
    the budget's `swept` mark ahead keeps the sweep out of the measured call; setting it to 0 makes
    the call sweep (`budget reserve, sweeping`). Either way every measured call takes one path."""
    mark = 0 if sweep else int(time.time() * 1000) + 3_600_000
    return ("HSET", keys.budget(world.campaign(i)), "swept", mark)


Build = Callable[[World, int], Any]  # -> a Call of the client
Prepare = Callable[[World, int], list[Command]]


@dataclass(frozen=True)
class HotCall:
    name: str  # id in the budget file and the JSON
    label: str  # as the ledger's table shows it
    function: str  # the library function the call runs
    target: float  # at most this many times the no-op's server µs
    build: Build
    prepare: Prepare | None = None
    # for redis-benchmark: the call with `__rand_int__` in the ids that must differ per call;
    # None when each call needs a setup of its own (a commit needs its reservation)
    bench: Build | None = None
    # True when `prepare` must run right before each call (it sets state the previous call
    # changed): it is then sent in the same round trip as the call, and its commands are taken
    # out of the counts; the client-side throughput of such a call is not reported
    setup_each_call: bool = False

    def command(self, world: World, i: int) -> Command:
        return tuple(self.build(world, i).command())

    def before(self, world: World, i: int) -> list[Command]:
        return self.prepare(world, i) if self.prepare else []


# Each hot call takes its fresh ids from its own kind, so one call's prerequisites never meet
# another call's ids (an auction created for the bids is not the one `auction create` creates).


def _reserve(w: World, i: int, rid: str) -> Any:
    return budgets.reserve_call(w.campaign(i), rid, 2_000, RESERVE_TTL_S)


def _create(aid: str) -> Any:
    return auctions.create_call(aid, IMPS, tmax_ms=AUCTION_TMAX_MS, exp=1, ttl=AUCTION_TTL_S)


def _open(aid: str) -> Any:
    return auctions.open_call(aid, IMPS, tmax_ms=AUCTION_TMAX_MS, exp=1, ttl=AUCTION_TTL_S)


def _record(w: World, i: int, imp: str | None = None) -> Any:
    return caps.record_call(w.user(i), imp or w.fresh("i", i), CANDIDATES[0], dedupe_ttl=60)


def _stats(w: World, i: int, ev: str | None = None, user: str | None = None) -> Any:
    event = Event(
        impressions=1,
        cost_micros=1_500,
        user_id=user or f"u{i % 5000}",
        event_id=ev or w.fresh("e", i),
    )
    return stats.record_call(w.campaign(i), [event])


def _track(w: World, i: int) -> Any:
    return sessions.track_call(
        w.session(i), categories=["cat1", "cat2"], keywords=["kw"], referrer="x"
    )


# redis-benchmark puts a random number (31 bits) in each `__rand_int__`: two of them make an id
# that 200,000 calls do not repeat
RAND = "__rand_int__" * 2

HOT_CALLS: tuple[HotCall, ...] = (
    HotCall(
        "session_get",
        "session get",
        "ac_session_get",
        3,
        lambda w, i: sessions.get_call(w.session(i)),
        bench=lambda w, i: sessions.get_call(w.session(i)),
    ),
    HotCall("session_track", "session track", "ac_session_track", 3, _track, bench=_track),
    HotCall(
        "profile_get",
        "profile get",
        "ac_profile_get",
        3,
        lambda w, i: profiles.get_call(w.user(i)),
        bench=lambda w, i: profiles.get_call(w.user(i)),
    ),
    HotCall(
        "profile_activity",
        "profile activity",
        "ac_profile_activity",
        3,
        lambda w, i: profiles.activity_call(w.user(i), 250),
        bench=lambda w, i: profiles.activity_call(w.user(i), 250),
    ),
    HotCall(
        "segment_list",
        "segment list",
        "ac_segment_of",
        3,
        lambda w, i: segments.of_call(w.user(i)),
        bench=lambda w, i: segments.of_call(w.user(i)),
    ),
    HotCall(
        "freqcap_check_1",
        "freqcap check ×1",
        "ac_freqcap_check",
        3,
        lambda w, i: caps.check_call(w.user(i), CANDIDATES[:1]),
        bench=lambda w, i: caps.check_call(w.user(i), CANDIDATES[:1]),
    ),
    HotCall(
        "freqcap_check_10",
        "freqcap check ×10",
        "ac_freqcap_check",
        6,
        lambda w, i: caps.check_call(w.user(i), CANDIDATES),
        bench=lambda w, i: caps.check_call(w.user(i), CANDIDATES),
    ),
    HotCall(
        "freqcap_record",
        "freqcap record",
        "ac_freqcap_record",
        3,
        _record,
        bench=lambda w, i: _record(w, i, imp=f"i{RAND}"),
    ),
    HotCall(
        "budget_reserve",
        "budget reserve",
        "ac_budget_reserve",
        3,
        lambda w, i: _reserve(w, i, w.fresh("r", i)),
        prepare=lambda w, i: [_pin_sweep(w, i)],
        bench=lambda w, i: _reserve(w, i, f"r{RAND}"),
    ),
    HotCall(
        "budget_reserve_sweep",
        "budget reserve, sweeping",
        "ac_budget_reserve",
        3,
        lambda w, i: _reserve(w, i, w.fresh("rs", i)),
        prepare=lambda w, i: [_pin_sweep(w, i, sweep=True)],
        setup_each_call=True,
    ),
    HotCall(
        "budget_commit",
        "budget commit",
        "ac_budget_commit",
        3,
        lambda w, i: budgets.commit_call(w.campaign(i), w.fresh("rc", i), 1_500),
        prepare=lambda w, i: [tuple(_reserve(w, i, w.fresh("rc", i)).command()), _pin_sweep(w, i)],
    ),
    HotCall(
        "auction_create",
        "auction create",
        "ac_auction_create",
        3,
        lambda w, i: _create(w.fresh("a", i)),
        bench=lambda w, i: _create(f"a{RAND}"),
    ),
    HotCall(
        "auction_bid_3",
        "auction bid ×3",
        "ac_auction_bid",
        3,
        lambda w, i: auctions.bid_many_call(w.fresh("ab", i), BIDS),
        prepare=lambda w, i: [tuple(_create(w.fresh("ab", i)).command())],
    ),
    HotCall(
        "auction_close",
        "auction close",
        "ac_auction_close",
        3,
        lambda w, i: auctions.close_call(w.fresh("ax", i)),
        prepare=lambda w, i: [
            tuple(_create(w.fresh("ax", i)).command()),
            tuple(auctions.bid_many_call(w.fresh("ax", i), BIDS).command()),
        ],
    ),
    HotCall(
        "auction_open",
        "auction open (new)",
        "ac_auction_open",
        3,
        lambda w, i: _open(w.fresh("ao", i)),
        # not for redis-benchmark: each __rand_int__ of its two keys draws its own number
    ),
    HotCall(
        "auction_bid_close_3",
        "auction bid ×3 + close",
        "ac_auction_bid_close",
        3,
        lambda w, i: auctions.bid_close_call(w.fresh("abx", i), BIDS),
        prepare=lambda w, i: [tuple(_create(w.fresh("abx", i)).command())],
    ),
    HotCall(
        "stats_record",
        "stats record",
        "ac_stats_record",
        3,
        _stats,
        bench=lambda w, i: _stats(w, i, ev=f"e{RAND}", user=f"u{RAND}"),
    ),
    HotCall(
        "stats_summary_7d",
        "stats summary 7 days",
        "ac_stats_summary",
        6,
        lambda w, i: stats.summary_call(w.campaign(i), "day", 7),
        bench=lambda w, i: stats.summary_call(w.campaign(i), "day", 7),
    ),
    HotCall(
        "cache_get_hit",
        "cache get (hit)",
        "ac_cache_get",
        3,
        lambda w, i: caches.get_call(CACHE, w.cache_key(i), CACHE_TOKEN, lock_ttl_ms=5000),
        bench=lambda w, i: caches.get_call(CACHE, w.cache_key(i), CACHE_TOKEN, lock_ttl_ms=5000),
    ),
)
BY_NAME = {h.name: h for h in HOT_CALLS}


# ---- counting ----

Stats = dict[str, tuple[int, int]]  # command row -> (calls, usec)


def commandstats(r: redis.Redis) -> Stats:
    out: Stats = {}
    for name, st in r.info("commandstats").items():
        out[name.removeprefix("cmdstat_")] = (int(st["calls"]), int(st["usec"]))
    return out


def delta(before: Stats, after: Stats) -> Stats:
    out: Stats = {}
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0:
            out[name] = (calls - c0, usec - u0)
    return out


def function_calls(d: Stats) -> int:
    return sum(d.get(f, (0, 0))[0] for f in FCALLS)


def inner(d: Stats) -> dict[str, int]:
    """Inner commands in a counter delta: every row but the function calls and the reading."""
    return {k: c for k, (c, _) in sorted(d.items()) if k not in FCALLS and k not in NOT_INNER}


def send_all(r: redis.Redis, commands: Sequence[Command], chunk: int = 200) -> None:
    """Run commands pipelined (no transaction); an error reply is raised."""
    for s in range(0, len(commands), chunk):
        pipe = r.pipeline(transaction=False)
        for c in commands[s : s + chunk]:
            pipe.execute_command(*c)
        pipe.execute()


class ForeignTraffic(RuntimeError):
    """Another client ran a function while a call was being counted."""


def exact_inner(r: redis.Redis, world: World, hc: HotCall, *, warmup: int = 2) -> dict[str, int]:
    """The inner commands of ONE call of `hc` in its steady state, counted exactly.

    `warmup` calls run first on the same entity (the first write to an entity may do more), then
    the call is counted alone from the counter delta around it. Redis executes commands one at a
    time, so the delta is exact as long as no other client runs commands meanwhile: a function
    call from anyone else is detected (ForeignTraffic). Give each measurement a World of its own
    (ids of fresh entities repeat per World). Calendar boundaries change some paths (a
    new hour's bucket, a day roll), so a measurement that spans the start of a UTC hour is redone.
    """
    for _ in range(3):
        hour = int(time.time()) // 3600
        for i in range(warmup):
            send_all(r, hc.before(world, i * world.entities))
            r.execute_command(*hc.command(world, i * world.entities))
        i = warmup * world.entities  # the same entity as the warm-up calls
        send_all(r, hc.before(world, i))
        # Expiries that follow the clock (`now + ttl`) are moved only when the server's
        # millisecond has changed since the last call on the key: let it change, as it has
        # between two calls on one entity in any real workload.
        time.sleep(0.005)
        before = commandstats(r)
        r.execute_command(*hc.command(world, i))
        after = commandstats(r)
        if int(time.time()) // 3600 != hour:
            continue
        d = delta(before, after)
        if function_calls(d) != 1:
            raise ForeignTraffic(f"{function_calls(d)} function calls counted for one call")
        return inner(d)
    raise RuntimeError("three measurements in a row crossed the start of an hour")
