"""Campaigns: reserve + commit (the spend of one won bid) and a targeting query, each against a
predecessor-style baseline written the old way and the no-op `FCALL_RO ac_version`.

Baselines: spend is a client-side check (HMGET budget/spent) then HINCRBYFLOAT of a float, one
round trip per step, which races under concurrency; targeting reads unsharded sets
(`targeting:<dimension>:<value>`) with one SMEMBERS round trip per set and combines them in the
client, with no end date or status filtering.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import redis

from adcache import AdCache
from adcache.campaigns import CampaignSpec
from adcache.targeting import Targeting, combine, user_shards
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

INTERESTS = [f"i{n}" for n in range(40)]
GEOS = [f"G{n}" for n in range(15)]
DEVICES = ["mobile", "desktop", "tv"]


def _targeting(rng: random.Random) -> Targeting:
    interests = rng.sample(INTERESTS, rng.randint(1, 3)) if rng.random() < 0.9 else []
    geos = rng.sample(GEOS, rng.randint(1, 2)) if rng.random() < 0.7 else []
    devices = [rng.choice(DEVICES)] if rng.random() < 0.5 else []
    return Targeting.of(interests, geos, devices)


def _spend(env: BenchEnv, ac: AdCache, r: redis.Redis, tag: str) -> list[Result]:
    cid = f"bench-{tag}"
    now = int(time.time() * 1000)
    ac.campaigns.set(
        cid,
        CampaignSpec(
            "bench-adv",
            bid_cpm_micros=2_000_000,
            budget_micros=10**14,
            start_ms=now - 1000,
            end_ms=now + 3_600_000,
            targeting=Targeting.of(["bench"]),
        ),
    )
    old = f"campaign:{cid}"
    r.hset(old, mapping={"budget": 1e9, "spent": 0.0, "status": "active"})
    n = 0

    def ours() -> None:
        nonlocal n
        n += 1
        rid = f"{tag}-{n}"
        ac.budgets.reserve(cid, rid, 2_000, 10)
        ac.budgets.commit(cid, rid, 1_500)

    def predecessor() -> None:
        budget, spent = r.hmget(old, "budget", "spent")
        if float(spent or 0) + 0.002 <= float(budget or 0):  # check, then spend: a race window
            r.hincrbyfloat(old, "spent", 0.0015)

    def noop2() -> None:
        r.execute_command("FCALL_RO", "ac_version", 0)
        r.execute_command("FCALL_RO", "ac_version", 0)

    res = side_by_side(
        "campaign spend",
        {
            "adcache reserve+commit": ours,
            "predecessor HMGET+HINCRBYFLOAT": predecessor,
            "2× no-op FCALL_RO": noop2,
        },
        calls=env.calls(6000),
    )
    o, p, z = (
        res["adcache reserve+commit"],
        res["predecessor HMGET+HINCRBYFLOAT"],
        res["2× no-op FCALL_RO"],
    )
    o.round_trips_per_op = round_trips(commands_per_op([r], ours), scripted=True)
    p.round_trips_per_op = round_trips(commands_per_op([r], predecessor), scripted=False)
    z.round_trips_per_op = 2.0
    old_over, our_over = _overspend(env, tag)
    o.note = (
        f"{ratio(o, p):.2f}× predecessor, {ratio(o, z):.2f}× 2 no-op FCALLs; "
        f"16 threads on a 0.2 budget: spent {our_over:.1%} of it"
    )
    p.note = f"16 threads on a 0.2 budget: spent {old_over:.1%} of it (check-then-spend race)"
    return list(res.values())


def _overspend(env: BenchEnv, tag: str, threads: int = 16) -> tuple[float, float]:
    """Spend a small budget from many threads at once, the old way and ours: what each spent,
    as a fraction of the budget (above 1: overspent)."""
    budget_micros, price = 200_000, 1_500
    cid = f"bench-race-{tag}"
    now = int(time.time() * 1000)
    setup = env.adcache()
    setup.campaigns.set(
        cid,
        CampaignSpec("bench-adv", 2_000_000, budget_micros, now - 1000, now + 3_600_000,
                     targeting=Targeting.of(["race"])),
    )  # fmt: skip
    old = f"campaign:race:{tag}"
    setup.redis.hset(old, mapping={"budget": budget_micros / 1e6, "spent": 0.0})

    def old_way() -> None:
        r = env.redis()
        for _ in range(400):
            budget, spent = r.hmget(old, "budget", "spent")
            if float(spent or 0) + price / 1e6 > float(budget or 0):
                break
            r.hincrbyfloat(old, "spent", price / 1e6)
        r.close()

    def our_way(w: int) -> None:
        ac = env.adcache()
        for n in range(400):
            rid = f"{w}-{n}"
            if not ac.budgets.reserve(cid, rid, price, 10).ok:
                break
            ac.budgets.commit(cid, rid, price)
        ac.close()

    pool = [threading.Thread(target=old_way) for _ in range(threads)]
    pool += [threading.Thread(target=our_way, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    old_spent = float(setup.redis.hget(old, "spent") or 0) * 1e6
    ours_spent = setup.budgets.state(cid).spent_micros
    setup.close()
    return old_spent / budget_micros, ours_spent / budget_micros


def _index(ac: AdCache, r: redis.Redis | None, n: int, tag: str) -> None:
    rng = random.Random(7)
    for i in range(n):
        cid = f"bench-{tag}-{i}"
        t = _targeting(rng)
        now = int(time.time() * 1000)
        ac.campaigns.set(
            cid,
            CampaignSpec("bench-adv", 2_000_000, 10**12, now - 1000, now + 3_600_000, targeting=t),
        )
        if r is not None:
            pipe = r.pipeline(transaction=False)
            for s in t.shards():
                dim, _, value = s.partition(".")
                pipe.sadd(f"targeting:{tag}:{dim}:{value}", cid)
            pipe.execute()


def _users(rng: random.Random, k: int) -> list[dict[str, Any]]:
    return [
        {
            "interests": rng.sample(INTERESTS, 3),
            "location": rng.choice(GEOS),
            "device": rng.choice(DEVICES),
        }
        for _ in range(k)
    ]


def _old_query(r: Any, tag: str, user: dict[str, Any]) -> list[str]:
    per_dim = user_shards(user["interests"], user["location"], user["device"])
    members: dict[str, list[str]] = {}
    for shards in per_dim.values():
        for s in shards:
            dim, _, value = s.partition(".")
            members[s] = [m.decode() for m in r.smembers(f"targeting:{tag}:{dim}:{value}")]
    return combine(per_dim, members)


def _query(env: BenchEnv, ac: AdCache, r: redis.Redis, tag: str, group: str) -> list[Result]:
    users = _users(random.Random(3), 200)
    k = 0

    def ours() -> None:
        nonlocal k
        k += 1
        ac.targeting.query(**users[k % 200])

    def ours2() -> None:
        nonlocal k
        k += 1
        ac.targeting.query(**users[k % 200], rounds=2)

    def predecessor() -> None:
        nonlocal k
        k += 1
        _old_query(r, tag, users[k % 200])

    res = side_by_side(
        group,
        {
            "adcache targeting.query": ours,
            "adcache targeting.query rounds=2": ours2,
            "predecessor SMEMBERS×8, client-side": predecessor,
            "no-op FCALL_RO": lambda: r.execute_command("FCALL_RO", "ac_version", 0),
        },
        calls=env.calls(3000),
    )
    o, p = res["adcache targeting.query"], res["predecessor SMEMBERS×8, client-side"]
    o2 = res["adcache targeting.query rounds=2"]
    sample = ac.targeting.query(**users[0])
    assert sorted(sample) == sorted(_old_query(r, tag, users[0])), "same matching rule"
    assert ac.targeting.query(**users[0], rounds=2) == sample
    o2.round_trips_per_op = round_trips(commands_per_op([r], ours2), scripted=True)
    o2.note = f"{ratio(o2, p):.2f}× predecessor; interest shards, then candidates: 2 rounds"
    o.round_trips_per_op = round_trips(commands_per_op([r], ours), scripted=True)
    p.round_trips_per_op = round_trips(commands_per_op([r], predecessor), scripted=False)
    o.note = (
        f"{ratio(o, p):.2f}× predecessor; 8 FCALL_RO in 1 pipelined round (vs 8 rounds); "
        f"~{len(sample)} ids/query; drops ended/paused/exhausted"
    )
    return list(res.values())


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    tag = uuid.uuid4().hex[:6]
    ac = env.adcache()
    r = ac.redis
    out += _spend(env, ac, r, tag)  # type: ignore[arg-type]
    _index(ac, r, 1000, tag)  # type: ignore[arg-type]
    out += _query(env, ac, r, tag, "targeting query (standalone)")  # type: ignore[arg-type]
    if env.cluster_url is not None:
        acc = env.adcache_cluster()
        _index(acc, None, 1000, tag)
        users = _users(random.Random(3), 200)
        k = 0

        def ours() -> None:
            nonlocal k
            k += 1
            acc.targeting.query(**users[k % 200])

        res = side_by_side(
            "targeting query (cluster)", {"adcache targeting.query": ours}, calls=env.calls(3000)
        )
        o = res["adcache targeting.query"]
        per = commands_per_op(env.cluster_primaries(), ours)
        o.round_trips_per_op = round_trips(per, scripted=True)
        o.note = "8 shard calls, one pipeline per node (3 primaries)"
        out += res.values()
    return out
