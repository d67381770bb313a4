"""Campaign stats: recording events and 7/30-day summaries, ours against the predecessor's way
(HINCRBYFLOAT + EXPIRE per counter, two round trips each; one HGETALL per day summed in Python),
with the no-op `FCALL_RO ac_version` as the floor."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from adcache.stats import Event
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side
from benchmarks.hotpath import backfill_stats_day

METRICS = ("impressions", "clicks", "conversions", "cost", "revenue")


class Predecessor:
    """The old client-side stats: float counters, a key per day, 7-day TTL reset on every write."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r

    def key(self, cid: str, date: str) -> str:
        return f"stats:{cid}:{date}"

    def increment_stat(self, cid: str, metric: str, value: float = 1.0) -> None:
        key = self.key(cid, datetime.now().strftime("%Y-%m-%d"))
        self.r.hincrbyfloat(key, metric, value)
        self.r.expire(key, 86400 * 7)

    def summary(self, cid: str, days: int) -> dict[str, float]:
        s = dict.fromkeys(METRICS, 0.0)
        for i in range(days):
            date = (datetime.now() - timedelta(days=i)).strftime("%Y-%m-%d")
            for k, v in self.r.hgetall(self.key(cid, date)).items():
                if k.decode() in s:
                    s[k.decode()] += float(v)
        s["ctr"] = s["clicks"] / s["impressions"] if s["impressions"] else 0.0
        s["cpc"] = s["cost"] / s["clicks"] if s["clicks"] else 0.0
        s["roas"] = s["revenue"] / s["cost"] if s["cost"] else 0.0
        return s


def _seed(r: redis.Redis, old: Predecessor, cid: str, days: int) -> None:
    """Fill `days` daily buckets both ways (ours cannot backdate, so they are written directly)."""
    now = datetime.now(UTC)
    pipe = r.pipeline(transaction=False)
    for i in range(days):
        d = now - timedelta(days=i)
        label = d.strftime("%Y%m%d")
        backfill_stats_day(pipe, cid, label, users=200)
        ok = old.key(cid, (datetime.now() - timedelta(days=i)).strftime("%Y-%m-%d"))
        pipe.hset(
            ok,
            mapping={
                "impressions": 1000,
                "clicks": 20,
                "conversions": 2,
                "cost": 1.5,
                "revenue": 4.0,
            },
        )
        pipe.expire(ok, 86400 * 3)
    pipe.execute()


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    ac = env.adcache()
    r: redis.Redis = ac.redis  # type: ignore[assignment]
    old = Predecessor(r)
    noop: Any = lambda: r.execute_command("FCALL_RO", "ac_version", 0)  # noqa: E731
    run_id = uuid.uuid4().hex[:8]

    # ---- record one impression (with cost, reach and de-dup for ours) ----
    cid = f"bench-{run_id}"
    n = 0

    def ours_record() -> None:
        nonlocal n
        n += 1
        ac.stats.record(
            cid, [Event(impressions=1, cost_micros=1_500, user_id=f"u{n % 5000}", event_id=f"e{n}")]
        )

    def old_record() -> None:
        old.increment_stat(cid, "impressions", 1)
        old.increment_stat(cid, "cost", 0.0015)

    res = side_by_side(
        "stats record (1 impression + cost)",
        {
            "adcache ac_stats_record": ours_record,
            "predecessor 2×(HINCRBYFLOAT+EXPIRE)": old_record,
            "FCALL_RO ac_version (no-op)": noop,
        },
        calls=env.calls(6000),
    )
    o, p = res["adcache ac_stats_record"], res["predecessor 2×(HINCRBYFLOAT+EXPIRE)"]
    o.round_trips_per_op = round_trips(commands_per_op([r], ours_record), scripted=True)
    p.round_trips_per_op = round_trips(commands_per_op([r], old_record), scripted=False)
    o.note = (
        f"{ratio(o, p):.2f}× predecessor, {ratio(o, res['FCALL_RO ac_version (no-op)']):.2f}× no-op;"
        " ours also counts reach and drops retries"
    )
    out += res.values()

    # ---- record a batch of 100 events ----
    m = 0

    def ours_batch() -> None:
        nonlocal m
        m += 1
        ac.stats.record(
            cid,
            [
                Event(impressions=1, cost_micros=1_500, user_id=f"u{k}", event_id=f"b{m}-{k}")
                for k in range(100)
            ],
        )

    def old_batch() -> None:
        for _ in range(100):
            old_record()

    res = side_by_side(
        "stats record ×100 events",
        {
            "adcache ac_stats_record (1 call)": ours_batch,
            "predecessor (400 round trips)": old_batch,
        },
        calls=env.calls(200),
        batch=100,
        rounds=4,
        warmup=3,
    )
    o, p = res["adcache ac_stats_record (1 call)"], res["predecessor (400 round trips)"]
    o.round_trips_per_op = round_trips(commands_per_op([r], ours_batch, ops=5), scripted=True) / 100
    p.round_trips_per_op = round_trips(commands_per_op([r], old_batch, ops=5), scripted=False) / 100
    o.note = f"{ratio(o, p):.2f}× predecessor"
    out += res.values()

    # ---- summaries over 7 and 30 days ----
    scid = f"bench-sum-{run_id}"
    _seed(r, old, scid, 30)
    for days in (7, 30):

        def ours_sum(days: int = days) -> None:
            ac.stats.summary(scid, days=days)

        def old_sum(days: int = days) -> None:
            old.summary(scid, days)

        check = ac.stats.summary(scid, days=days)
        assert check.impressions == 1000 * days and abs(check.reach - 200) <= 6, check
        res = side_by_side(
            f"stats summary {days} days",
            {
                "adcache ac_stats_summary": ours_sum,
                f"predecessor {days}×HGETALL": old_sum,
                "FCALL_RO ac_version (no-op)": noop,
            },
            calls=env.calls(3000 if days == 7 else 1500),
        )
        o, p = res["adcache ac_stats_summary"], res[f"predecessor {days}×HGETALL"]
        o.round_trips_per_op = round_trips(commands_per_op([r], ours_sum), scripted=True)
        p.round_trips_per_op = round_trips(commands_per_op([r], old_sum), scripted=False)
        o.note = f"{ratio(o, p):.2f}× predecessor; exact integers + reach + CTR/CVR/CPC/CPM/ROAS"
        out += res.values()
    return out
