"""The hot path on the 3-primary cluster, one client process: every operation through the adcache
client, the predecessor's way, plain redis-py `RedisCluster.fcall` (its own slot lookup), and the
limits of the same client: the no-op `FCALL_RO ac_version` and `PING`. Plus the pipelined
standalone case (`run_many` of 100 calls).

    PYTHONPATH=python_client:loader:. ADCACHE_BENCH_SCALE=0.3 python -m benchmarks --only hotpath
"""

from __future__ import annotations

import uuid
from typing import Any

import redis
from redis.cluster import RedisCluster

from adcache import AdCache, Call
from adcache import _generated as keys
from adcache._core import raw
from adcache.sessions import create_call
from benchmarks import hotpath
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

OURS, PRED, PLAIN, NOOP, PING = (
    "adcache",
    "predecessor-style",
    "RedisCluster.fcall (plain)",
    "FCALL_RO ac_version (no-op)",
    "PING",
)


def server_us(clients: list[redis.Redis], fn: Any, ops: int = 60) -> float:
    """Server time per operation in its function calls (INFO commandstats usec, inner commands
    included): what the server spends, as against what the client and the network spend."""
    fn()
    for c in clients:
        c.config_resetstat()
    for _ in range(ops):
        fn()
    total = 0
    for c in clients:
        for name, st in c.info("commandstats").items():
            if name.removeprefix("cmdstat_") in ("fcall", "fcall_ro"):
                total += int(st["usec"])
    return total / ops


def _clients(env: BenchEnv) -> tuple[AdCache, Any, Any, list[redis.Redis], redis.Redis]:
    """Our client, plain redis-py, the predecessor's client, the primaries, and one node's
    connection of our own client (for PING)."""
    if env.cluster_url is None:
        r = env.redis()
        return AdCache(r), r, r, [r], r
    ac = env.adcache_cluster()
    rc: RedisCluster = ac.redis  # type: ignore[assignment]
    node = rc.get_primaries()[0]
    return ac, env.cluster(), env.cluster(), env.cluster_primaries(), rc.get_redis_connection(node)


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    tag = uuid.uuid4().hex[:6]
    ac, plain, old, prim, node = _clients(env)
    hotpath.seed(ac, old, tag)
    where = "cluster" if env.cluster_url else "standalone"
    for op in hotpath.ops(tag):
        src_ours, src_plain = op.calls(f"o-{tag}"), op.calls(f"p-{tag}")
        pred = op.predecessor(old, f"x-{tag}")

        def ours(src: Any = src_ours) -> None:
            ac.run(src())

        def plain_fcall(src: Any = src_plain) -> None:
            hotpath.plain_call(plain, src())

        cases = {
            OURS: ours,
            PRED: pred,
            PLAIN: plain_fcall,
            NOOP: lambda: ac.run(hotpath.NOOP),
            PING: node.ping,
        }
        # a multiple of 6 calls per round keeps the cycled operations (2 or 3 calls) whole
        res = side_by_side(f"hot path ({where}): {op.name}", cases, calls=env.calls(5000) // 30 * 30,
                           rounds=10, warmup=30)  # fmt: skip
        o, p, pl, n, pg = (res[k] for k in (OURS, PRED, PLAIN, NOOP, PING))
        o.round_trips_per_op = round_trips(commands_per_op(prim, ours, ops=60), scripted=True)
        per = commands_per_op(prim, plain_fcall, ops=60)
        getkeys = per.get("command|getkeys", 0.0)
        pl.round_trips_per_op = round_trips(per, scripted=True) + getkeys
        p.round_trips_per_op = op.pred_requests(commands_per_op(prim, pred, ops=60))
        n.round_trips_per_op = round_trips(
            commands_per_op(prim, lambda: ac.run(hotpath.NOOP), ops=60), scripted=True
        )
        pg.round_trips_per_op = commands_per_op(prim, node.ping, ops=60).get("ping", 0.0)
        o_us = server_us(prim, ours)
        n_us = server_us(prim, lambda: ac.run(hotpath.NOOP))
        o.note = (
            f"{ratio(o, n):.2f}× no-op, {ratio(o, p):.2f}× predecessor,"
            f" {ratio(o, pl):.2f}× plain fcall; server {o_us:.0f} µs/op (no-op {n_us:.0f})"
        )
        p.note = op.pred_note
        pl.note = f"{getkeys:.1f} COMMAND GETKEYS per call" if getkeys else ""
        for kind, r in zip(
            ("ours", "predecessor", "plain", "noop", "ping"), (o, p, pl, n, pg), strict=True
        ):
            r.extra = {"op": op.name, "kind": kind, "where": where}
        o.extra.update(
            server_us=round(o_us, 1),
            noop_server_us=round(n_us, 1),
            vs_noop=round(ratio(o, n), 3),
            vs_predecessor=round(ratio(o, p), 3),
            vs_plain=round(ratio(o, pl), 3),
        )
        out += res.values()
    out += _pipelined_standalone(env, tag)
    return out


def _pipelined_standalone(env: BenchEnv, tag: str) -> list[Result]:
    """`run_many` of 100 session reads on one standalone server, against a redis-py pipeline of the
    same 100 FCALL_RO and 100 PINGs pipelined (the limit)."""
    ac = env.adcache()
    r: redis.Redis = ac.redis  # type: ignore[assignment]
    sids = [f"pipe-{tag}-{i}" for i in range(100)]
    ac.run_many([create_call(s, "u", idle_ttl=3600, max_lifetime=3600) for s in sids])
    calls: list[Call[Any]] = [Call("ac_session_get", (keys.session(s),), (), raw) for s in sids]

    def ours() -> None:
        ac.run_many(calls)

    def pipe_fcall() -> None:
        p = r.pipeline(transaction=False)
        for c in calls:
            p.execute_command(*c.command())
        p.execute()

    def pipe_ping() -> None:
        p = r.pipeline(transaction=False)
        for _ in range(100):
            p.ping()
        p.execute()

    res = side_by_side(
        "pipelined standalone ×100",
        {"adcache run_many": ours, "redis-py pipeline of FCALL_RO": pipe_fcall, "pipelined PING": pipe_ping},
        calls=env.calls(600),
        batch=100,
    )  # fmt: skip
    o = res["adcache run_many"]
    per = commands_per_op([r], ours, ops=5)
    us = server_us([r], ours, ops=5) / 100
    o.note = (
        f"{per.get('fcall_ro', 0) / 100:.0f} FCALL_RO per call, one pipeline of 100; "
        f"{ratio(o, res['redis-py pipeline of FCALL_RO']):.2f}× redis-py pipeline; "
        f"server {us:.1f} µs per call: the server alone caps one node at {1e6 / us:,.0f} calls/s"
    )
    o.extra = {
        "op": "pipelined standalone",
        "kind": "ours",
        "where": "standalone",
        "server_us_per_call": round(us, 2),
    }
    return list(res.values())
