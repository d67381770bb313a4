"""The ad decision on the 3-primary cluster: `cache.decide` against the same path done the
predecessor's way (plain redis-py commands, client-side read-modify-write, one round trip per
step, float money), and the no-op FCALL_RO, in one interleaved run."""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

from redis.cluster import RedisCluster

from adcache.decide import AdRequest
from adcache_loader import simulate as sim
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, ratio, side_by_side


def _old_setup(rc: RedisCluster, pop: sim.Population) -> None:
    p = pop.prefix
    for cid, s in pop.campaigns.items():
        rc.hset(
            f"{p}:camp:{cid}",
            mapping={
                "bid": s.bid_cpm_micros / 1e6,
                "budget": s.budget_micros / 1e6,
                "spent": 0.0,
                "cap": s.frequency_caps[0].limit if s.frequency_caps else 0,
                "interests": ",".join(s.targeting.interests),
            },
        )
        t = s.targeting
        for dim, vals in (("interest", t.interests), ("geo", t.locations), ("device", t.devices)):
            for v in vals or ("all",):
                rc.sadd(f"{p}:tgt:{dim}:{v}", cid)
    for u in pop.users:
        rc.set(f"{p}:prof:{u.user_id}", json.dumps({"interests": list(u.interests)}))
        rc.rpush(f"{p}:sess:{u.session_id}", json.dumps({"categories": list(u.interests[:2])}))


class _Old:
    """The predecessor's decision: every step its own round trip, money as floats."""

    def __init__(self, rc: RedisCluster, prefix: str) -> None:
        self.rc, self.p, self.trips, self.n = rc, prefix, 0, 0

    def _r(self, *cmd: Any) -> Any:
        self.trips += 1
        return self.rc.execute_command(*cmd)

    def decide(self, req: AdRequest) -> bool:
        p = self.p
        self.n += 1
        prof = json.loads(self._r("GET", f"{p}:prof:{req.user_id}") or "{}")
        hist = self._r("LRANGE", f"{p}:sess:{req.session_id}", 0, 49)
        session = {c for h in hist for c in json.loads(h)["categories"]}
        interests = set(req.categories)
        dims: dict[str, set[str]] = {}
        for dim, vals in (
            ("interest", interests),
            ("geo", {req.location} if req.location else set()),
            ("device", {req.device} if req.device else set()),
        ):
            ids: set[str] = set()
            for v in [*sorted(vals), "all"]:
                ids |= {x.decode() for x in self._r("SMEMBERS", f"{p}:tgt:{dim}:{v}")}
            dims[dim] = ids
        cands = dims["interest"] & dims["geo"] & dims["device"]
        best: tuple[float, str] | None = None
        for cid in sorted(cands):
            c = {k.decode(): v.decode() for k, v in self._r("HGETALL", f"{p}:camp:{cid}").items()}
            seen = int(self._r("GET", f"{p}:fc:{req.user_id}:{cid}") or 0)
            cap = int(c["cap"])
            if cap and seen >= cap:
                continue
            bid = float(c["bid"])
            mine = set(filter(None, c["interests"].split(",")))
            if mine & set(prof.get("interests", ())):
                bid *= 1.2
            if mine & session:
                bid *= 1.15
            if float(c["spent"]) + bid / 1000 > float(c["budget"]):
                continue
            if best is None or bid > best[0]:
                best = (bid, cid)
        if best is None:
            return False
        bid, cid = best
        floor = float(req.imps[0].floor)
        if bid < floor:
            return False
        price = floor + 0.01  # second price with one bidder
        self._r("HINCRBYFLOAT", f"{p}:camp:{cid}", "spent", price / 1000)
        self._r("INCR", f"{p}:fc:{req.user_id}:{cid}")
        self._r("EXPIRE", f"{p}:fc:{req.user_id}:{cid}", 86400)
        self._r("HINCRBY", f"{p}:st:{cid}", "impressions", 1)
        self._r("HINCRBYFLOAT", f"{p}:st:{cid}", "cost", price / 1000)
        self._r("LPUSH", f"{p}:simp:{req.session_id}", cid)
        return True


def run(env: BenchEnv) -> list[Result]:
    if not env.cluster_url:
        return []
    n = env.calls(3000)
    tag = f"bd{uuid.uuid4().hex[:6]}"
    # budgets large enough that most requests are served all along the run
    pop = sim.generate(
        tag, n_users=400, n_campaigns=60, n_requests=n + 200, seed=13, budget_scale=50.0
    )
    ac = env.adcache_cluster()
    rc = env.cluster()
    sim.setup(ac, pop)
    _old_setup(rc, pop)
    ours_reqs = iter(pop.requests)
    old_reqs = itertools.cycle(pop.requests)
    old = _Old(rc, tag)
    decisions = []

    def ours() -> None:
        decisions.append(ac.decide.decide(next(ours_reqs)))

    def predecessor() -> None:
        old.decide(next(old_reqs))

    res = side_by_side(
        "decision (cluster, 3 primaries)",
        {
            "adcache decide (4 rounds)": ours,
            "predecessor-style (1 round trip per step, floats)": predecessor,
            "no-op FCALL_RO": lambda: ac.redis.execute_command(
                "FCALL_RO", "ac_version", 0, target_nodes=RedisCluster.RANDOM
            ),
        },
        calls=n,
        rounds=5,
        warmup=20,
    )
    o = res["adcache decide (4 rounds)"]
    p = res["predecessor-style (1 round trip per step, floats)"]
    o.round_trips_per_op = sum(d.rounds for d in decisions) / max(1, len(decisions))
    p.round_trips_per_op = old.trips / max(1, old.n)
    served = sum(d.served for d in decisions) / max(1, len(decisions))
    a = sim.audit(ac, pop, decisions)
    o.note = (
        f"{ratio(o, p):.2f}× predecessor; served {served:.0%}; caps, budgets with "
        f"reservations, auction, stats; audit ok={a.ok}"
    )
    p.note = "no reservations, no auction record, check-then-spend (can overspend), float money"
    ac.close()
    rc.close()
    return list(res.values())
