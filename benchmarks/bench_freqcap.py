"""Frequency caps: a check of 1, 10 and 100 candidates and an impression record, against the
predecessor-style baseline (one INCR+EXPIRE script call per campaign, client-side loop, float
time argument) and the no-op `FCALL_RO ac_version 0`; and MEMORY USAGE per (user, campaign) pair."""

from __future__ import annotations

import itertools
import time
import uuid

import redis

from adcache import _generated as keys
from adcache.caps import Candidate, CapRule
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

# The predecessor's script, as it ran: check and count in one, the window slid by every EXPIRE.
PREDECESSOR_SCRIPT = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local current_time = tonumber(ARGV[3])
local current = redis.call('GET', key)
if current == false then current = 0 else current = tonumber(current) end
if current >= limit then return 0 end
redis.call('INCR', key)
redis.call('EXPIRE', key, window)
return 1
"""

USERS = 200
# A typical campaign: a daily and an hourly cap and an advertiser-wide weekly cap. Limits are high
# so every record is admitted and writes (the expensive path).
RULES = (
    CapRule.fixed("campaign", "day", 1_000_000),
    CapRule.fixed("campaign", "hour", 1_000_000),
    CapRule.fixed("advertiser", "week", 1_000_000),
)


def _candidates(n: int) -> list[Candidate]:
    return [Candidate(f"camp-{i:04d}", RULES, advertiser_id=f"adv-{i % 20:02d}") for i in range(n)]


def _memory(r: redis.Redis, run: str) -> tuple[float, float, float]:
    """Bytes per active (user, campaign) pair: ours with 3 caps (day, week, recency) over 20
    campaigns of one user; ours with day, week and a full rolling 1 h cap of 10; and the
    predecessor's one string key per pair."""
    from adcache import AdCache

    ac = AdCache(r)
    typical = (
        CapRule.fixed("campaign", "day", 3),
        CapRule.fixed("campaign", "week", 10),
        CapRule.recency("campaign", 300),
    )
    rolling = (
        CapRule.fixed("campaign", "day", 30),
        CapRule.fixed("campaign", "week", 100),
        CapRule.rolling("campaign", 3600, 10),
    )
    out = []
    for rules, name in ((typical, "t"), (rolling, "r")):
        user = f"mem-{name}-{run}"
        for i in range(20):
            c = Candidate(f"campaign-{i:04d}", rules, advertiser_id="advertiser-01")
            for k in range(10 if name == "r" else 1):  # the rolling list full: its worst case
                ac.caps.record(user, f"imp-{i}-{k}", c, dedupe_ttl=1)
        out.append((r.memory_usage(keys.freqcap(user), samples=0) or 0) / 20)
    script = r.register_script(PREDECESSOR_SCRIPT)
    pred = 0
    for i in range(20):
        k = f"freq:cap:mem-{run}:campaign-{i:04d}"
        script(keys=[k], args=[3, 86400, time.time()])
        pred += r.memory_usage(k, samples=0) or 0
    return out[0], out[1], pred / 20


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    ac = env.adcache()
    r = ac.redis
    run_id = uuid.uuid4().hex[:8]
    users = [f"bench-{run_id}-{u}" for u in range(USERS)]
    script = r.register_script(PREDECESSOR_SCRIPT)
    noop = lambda: r.execute_command("FCALL_RO", "ac_version", 0)  # noqa: E731
    seq = itertools.count()

    mem_typ, mem_roll, mem_pred = _memory(r, run_id)

    for n in (1, 10, 100):
        cands = _candidates(n)
        # seed some counts so the check reads real fields
        for u in users[:50]:
            ac.caps.record(u, f"seed-{n}", cands[0])

        def ours(cands: list[Candidate] = cands) -> None:
            ac.caps.check(users[next(seq) % USERS], cands)

        def predecessor(cands: list[Candidate] = cands) -> None:
            # one script call per campaign, as FrequencyCapManager.check_frequency_cap did
            u = users[next(seq) % USERS]
            for c in cands:
                script(
                    keys=[f"freq:cap:{u}:{c.campaign_id}"],
                    args=[1_000_000, 86400, time.time()],
                )

        res = side_by_side(
            f"freqcap check×{n}",
            {
                "adcache caps.check (1 FCALL_RO)": ours,
                "predecessor (1 EVALSHA per campaign)": predecessor,
                "FCALL_RO ac_version (no-op)": noop,
            },
            calls=env.calls(3000 if n < 100 else 600),
        )
        o = res["adcache caps.check (1 FCALL_RO)"]
        p = res["predecessor (1 EVALSHA per campaign)"]
        b = res["FCALL_RO ac_version (no-op)"]
        o.round_trips_per_op = round_trips(commands_per_op([r], ours), scripted=True)
        p.round_trips_per_op = round_trips(commands_per_op([r], predecessor), scripted=True)
        o.note = (
            f"{ratio(o, p):.2f}× predecessor, {ratio(o, b):.2f}× no-op; "
            f"{o.ops_per_s * n:,.0f} candidates/s"
        )
        p.note = f"{p.ops_per_s * n:,.0f} candidates/s"
        out += res.values()

    cand = _candidates(1)[0]

    def record() -> None:
        i = next(seq)
        ac.caps.record(users[i % USERS], f"imp-{run_id}-{i}", cand)

    def pred_record() -> None:
        i = next(seq)
        script(
            keys=[f"freq:cap:{users[i % USERS]}:{cand.campaign_id}"],
            args=[1_000_000, 86400, time.time()],
        )

    res = side_by_side(
        "freqcap record",
        {
            "adcache caps.record (1 FCALL)": record,
            "predecessor (1 EVALSHA, one window)": pred_record,
            "FCALL_RO ac_version (no-op)": noop,
        },
        calls=env.calls(3000),
    )
    o = res["adcache caps.record (1 FCALL)"]
    p = res["predecessor (1 EVALSHA, one window)"]
    b = res["FCALL_RO ac_version (no-op)"]
    o.round_trips_per_op = round_trips(commands_per_op([r], record), scripted=True)
    p.round_trips_per_op = round_trips(commands_per_op([r], pred_record), scripted=True)
    o.note = (
        f"{ratio(o, p):.2f}× predecessor, {ratio(o, b):.2f}× no-op; 3 windows + idempotency; "
        f"memory per (user, campaign) pair: {mem_typ:.0f} B with day+week+recency caps, "
        f"{mem_roll:.0f} B with day+week+a full rolling 1 h cap of 10 (recorded back to back); predecessor {mem_pred:.0f} B "
        f"(one window)"
    )
    o.extra = {
        "bytes_per_pair_day_week_recency": round(mem_typ),
        "bytes_per_pair_with_rolling_10": round(mem_roll),
        "bytes_per_pair_predecessor": round(mem_pred),
    }
    out += res.values()

    # ---- cluster: the check of 100 is still one round trip, straight to the user's node ----
    if env.cluster_url is not None:
        acc = env.adcache_cluster()
        cands = _candidates(100)
        cusers = [f"bench-{run_id}-c{u}" for u in range(30)]

        def cluster_check() -> None:
            acc.caps.check(cusers[next(seq) % 30], cands)

        res = side_by_side(
            "freqcap cluster check×100",
            {"adcache caps.check (1 FCALL_RO)": cluster_check},
            calls=env.calls(600),
        )
        o = res["adcache caps.check (1 FCALL_RO)"]
        prim = env.cluster_primaries()
        o.round_trips_per_op = round_trips(commands_per_op(prim, cluster_check), scripted=True)
        o.note = f"{o.ops_per_s * 100:,.0f} candidates/s; routed to the owning primary"
        out += res.values()
    return out
