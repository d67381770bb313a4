"""The ad decision on the 3-primary cluster: `cache.decide` against the same path done the
predecessor's way (plain redis-py commands, client-side read-modify-write, one round trip per
step, float money), and the no-op FCALL_RO, in one interleaved run.

`python benchmarks/bench_decide.py --server-cost [--baseline DIR]` measures what a decision costs
the server instead: function calls, server µs (`INFO commandstats`, `fcall` + `fcall_ro`) and
rounds per decision, and the no-op `FCALL_RO ac_version 0` in the same run. With `--baseline`
(a checkout of another commit) both codes drive the same population, in alternating chunks
against one server, each in its own process (see `server_cost`).
"""

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


# ---- server cost per decision (`--server-cost`) ----
#
# A worker process per code version (PYTHONPATH of that checkout) generates the same population
# under its own prefix, sets it up and warms its record cache; then the driver asks each in turn
# for a chunk of decisions, resetting the servers' statistics before each chunk and reading them
# after, so the versions are measured against the same servers in one run, chunks interleaved.
# The worker times each decision too (one client, one decision at a time). It only uses the
# public API (`AdCache`, `decide`, `simulate`), so it runs any version.

WORKER = r"""
import json, sys, time
from collections import Counter
from adcache import AdCache
from adcache_loader import simulate as sim

url, prefix, n, cluster = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
calls = Counter()

class Counting(AdCache):
    def run_many(self, cs, *, raise_on_error=True):
        calls.update(c.function for c in cs)
        return super().run_many(cs, raise_on_error=raise_on_error)

pop = sim.generate(prefix, n_users=400, n_campaigns=60, n_requests=n, seed=13, budget_scale=50.0)
cache = Counting.from_url(url, cluster=cluster)
sim.setup(cache, pop)
reqs = iter(pop.requests)
print(json.dumps({"ready": True}), flush=True)
for line in sys.stdin:
    k = int(line)
    calls.clear()
    ds, lat = [], []
    t0 = time.perf_counter()
    for _ in range(k):
        t = time.perf_counter()
        ds.append(cache.decide.decide(next(reqs)))
        lat.append(time.perf_counter() - t)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"calls": dict(calls), "rounds": sum(d.rounds for d in ds),
                      "served": sum(d.served for d in ds), "n": k, "lat": lat,
                      "elapsed": elapsed}), flush=True)
"""


def _fcall_stats(nodes: list[Any]) -> tuple[int, int]:
    calls = usec = 0
    for r in nodes:
        st = r.info("commandstats")
        for k in ("cmdstat_fcall", "cmdstat_fcall_ro"):
            calls += int(st.get(k, {}).get("calls", 0))
            usec += int(st.get(k, {}).get("usec", 0))
    return calls, usec


def server_cost(
    url: str,
    codes: dict[str, str],
    *,
    cluster: bool = False,
    warmup: int = 300,
    chunk: int = 200,
    chunks: int = 5,
) -> dict[str, dict[str, float]]:
    """{version: figures per decision} for each code checkout (name -> repo dir), interleaved
    against the same server (or every primary of the cluster)."""
    import subprocess
    import sys

    import redis

    if cluster:
        rc = RedisCluster.from_url(url)
        nodes = [rc.get_redis_connection(n) for n in rc.get_primaries()]
    else:
        nodes = [redis.Redis.from_url(url)]
    n = warmup + chunk * chunks + 10
    procs: dict[str, subprocess.Popen[str]] = {}
    for name, root in codes.items():
        env = {"PYTHONPATH": f"{root}/python_client:{root}/loader", "PATH": "/usr/bin:/bin"}
        procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                url,
                f"sc{uuid.uuid4().hex[:6]}",
                str(n),
                str(int(cluster)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
    for p in procs.values():
        assert p.stdout is not None and json.loads(p.stdout.readline())["ready"]

    def ask(p: subprocess.Popen[str], k: int) -> dict[str, Any]:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(f"{k}\n")
        p.stdin.flush()
        return json.loads(p.stdout.readline())  # type: ignore[no-any-return]

    for p in procs.values():
        ask(p, warmup)
    keys = ("decisions", "fcalls", "usec", "rounds", "served", "elapsed")
    tot = {name: dict.fromkeys(keys, 0.0) for name in codes}
    lat: dict[str, list[float]] = {name: [] for name in codes}
    by_fn: dict[str, dict[str, int]] = {name: {} for name in codes}
    noop = [0, 0]
    for _ in range(chunks):
        for name, p in procs.items():
            for r in nodes:
                r.config_resetstat()
            got = ask(p, chunk)
            calls, usec = _fcall_stats(nodes)
            t = tot[name]
            t["decisions"] += got["n"]
            t["fcalls"] += calls
            t["usec"] += usec
            t["rounds"] += got["rounds"]
            t["served"] += got["served"]
            t["elapsed"] += got["elapsed"]
            lat[name] += got["lat"]
            for fn, c in got["calls"].items():
                by_fn[name][fn] = by_fn[name].get(fn, 0) + c
        for r in nodes:
            r.config_resetstat()
        for _ in range(500):
            nodes[0].execute_command("FCALL_RO", "ac_version", 0)
        calls, usec = _fcall_stats(nodes)
        noop[0] += calls
        noop[1] += usec
    for p in procs.values():
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    noop_us = noop[1] / max(1, noop[0])
    out: dict[str, dict[str, float]] = {}
    for name, t in tot.items():
        d = t["decisions"]
        ls = sorted(lat[name])
        out[name] = {
            "fcalls": t["fcalls"] / d,
            "server_us": t["usec"] / d,
            "noop_server_us": noop_us,
            "ratio_to_noop": t["usec"] / d / noop_us,
            "rounds": t["rounds"] / d,
            "served": t["served"] / d,
            "decisions_per_s": d / t["elapsed"],
            "p50_us": ls[len(ls) // 2] * 1e6,
            "p99_us": ls[min(len(ls) - 1, int(0.99 * len(ls)))] * 1e6,
            **{f"calls:{fn}": c / d for fn, c in sorted(by_fn[name].items())},
        }
    return out


def _main() -> None:
    import argparse
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--server-cost", action="store_true", required=True)
    ap.add_argument("--baseline", help="a checkout of the commit to compare with")
    ap.add_argument("--cluster", action="store_true", help="a throwaway 3-primary cluster")
    ap.add_argument("--url", help="a server (or cluster node, with --cluster) with the library")
    ap.add_argument("--chunk", type=int, default=200)
    ap.add_argument("--chunks", type=int, default=5)
    a = ap.parse_args()
    here = str(Path(__file__).resolve().parent.parent)
    codes = {"this": here}
    if a.baseline:
        codes = {"baseline": a.baseline, "this": here}
    started: Any = None
    url = a.url
    if url is None:
        from adcache_loader.deploy import deploy
        from adcache_loader.servers import LocalCluster, RedisServer

        if a.cluster:
            started = LocalCluster(3, extra_args=["--cluster-announce-ip", "127.0.0.1"]).start()
            url = started.seed_url
        else:
            started = RedisServer().start()
            url = started.url
        deploy(url)
    try:
        res = server_cost(url, codes, cluster=a.cluster, chunk=a.chunk, chunks=a.chunks)
    finally:
        if started is not None:
            started.stop()
    keys = sorted({k for v in res.values() for k in v}, key=lambda k: (k.startswith("calls:"), k))
    print(f"{'per decision':28}" + "".join(f"{n:>12}" for n in res))
    for k in keys:
        print(f"{k:28}" + "".join(f"{res[n].get(k, 0):12.2f}" for n in res))
    if "baseline" in res:
        b, t = res["baseline"], res["this"]
        print(
            f"this / baseline: function calls {t['fcalls'] / b['fcalls']:.2f}, server µs "
            f"{t['server_us'] / b['server_us']:.2f}, decisions/s "
            f"{t['decisions_per_s'] / b['decisions_per_s']:.2f}, p99 {t['p99_us'] / b['p99_us']:.2f}"
        )


if __name__ == "__main__":
    _main()
