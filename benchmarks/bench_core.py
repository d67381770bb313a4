"""Client core: our cluster routing against plain redis-py and a hand-routed call, single calls and
pipelines of 100; and a session read against the no-op `FCALL ac_version` and PING."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from adcache import Call
from adcache import _generated as keys
from adcache._core import raw
from adcache.sessions import get_call
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side


def _sessions(cache: Any, n: int) -> list[str]:
    ids = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for sid in ids:
        cache.sessions.create(sid, "bench-user", idle_ttl=600, max_lifetime=600)
    return ids


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []

    # ---- standalone: a session read vs the no-op function vs PING, one client ----
    ac = env.adcache()
    ids = _sessions(ac, 100)
    r = ac.redis
    i = 0

    def session_get() -> None:
        nonlocal i
        i += 1
        ac.sessions.get(ids[i % 100])

    res = side_by_side(
        "standalone",
        {
            "ac_session_get (adcache client)": session_get,
            "FCALL_RO ac_version (no-op)": lambda: r.execute_command("FCALL_RO", "ac_version", 0),
            "PING": r.ping,
        },
        calls=env.calls(20000),
    )
    base = res["FCALL_RO ac_version (no-op)"]
    ours = res["ac_session_get (adcache client)"]
    ours.note = f"{ratio(ours, base):.2f}× no-op FCALL"
    ours.round_trips_per_op = round_trips(commands_per_op([r], session_get), scripted=True)
    out += res.values()

    # ---- cluster: single calls ----
    if env.cluster_url is None:
        return out
    acc = env.adcache_cluster()
    rc = acc.redis
    cids = _sessions(acc, 300)
    plain = env.cluster()
    j = 0

    def ours_single() -> None:
        nonlocal j
        j += 1
        acc.sessions.get(cids[j % 300])

    def plain_single() -> None:
        nonlocal j
        j += 1
        plain.fcall_ro("ac_session_get", 1, keys.session(cids[j % 300]))

    def hand_single() -> None:
        nonlocal j
        j += 1
        k = keys.session(cids[j % 300])
        node = rc.get_node_from_key(k)
        rc.execute_command("FCALL_RO", "ac_session_get", 1, k, target_nodes=node)

    res = side_by_side(
        "cluster single",
        {
            "adcache client": ours_single,
            "RedisCluster.fcall_ro": plain_single,
            "hand-routed": hand_single,
        },
        calls=env.calls(6000),
    )
    o, p, h = res["adcache client"], res["RedisCluster.fcall_ro"], res["hand-routed"]
    o.note = f"{ratio(o, p):.2f}× plain fcall, {ratio(o, h):.2f}× hand-routed"
    prim = env.cluster_primaries()
    o.round_trips_per_op = round_trips(commands_per_op(prim, ours_single), scripted=True)
    per = commands_per_op(prim, plain_single)
    p.round_trips_per_op = round_trips(per, scripted=True) + per.get("command|getkeys", 0)
    p.note = f"{per.get('command|getkeys', 0):.1f} COMMAND GETKEYS per call"
    out += res.values()

    # ---- cluster: pipelines of 100 ----
    batch = [cids[(k * 7) % 300] for k in range(100)]
    raw_calls = [Call("ac_session_get", (keys.session(s),), (), raw) for s in batch]
    parsed_calls = [get_call(s) for s in batch]

    def ours_pipe() -> None:
        acc.run_many(raw_calls)

    def ours_pipe_parsed() -> None:
        acc.run_many(parsed_calls)

    def plain_pipe() -> None:
        pipe = plain.pipeline()
        for s in batch:
            pipe.fcall_ro("ac_session_get", 1, keys.session(s))
        pipe.execute()

    def hand_pipe() -> None:
        groups: dict[Any, list[str]] = defaultdict(list)
        for s in batch:
            k = keys.session(s)
            groups[rc.get_node_from_key(k).name].append(k)
        for name, ks in groups.items():
            pipe = rc.get_redis_connection(rc.get_node(node_name=name)).pipeline(transaction=False)
            for k in ks:
                pipe.execute_command("FCALL_RO", "ac_session_get", 1, k)
            pipe.execute()

    res = side_by_side(
        "cluster pipeline×100",
        {
            "adcache run_many": ours_pipe,
            "adcache run_many, parsed records": ours_pipe_parsed,
            "RedisCluster.pipeline": plain_pipe,
            "hand-routed pipelines": hand_pipe,
        },
        calls=env.calls(300),
        batch=100,
    )
    o, p, h = res["adcache run_many"], res["RedisCluster.pipeline"], res["hand-routed pipelines"]
    o.note = f"{ratio(o, p):.2f}× plain pipeline, {ratio(o, h):.2f}× hand-routed (raw replies)"
    op = res["adcache run_many, parsed records"]
    op.note = f"{ratio(op, h):.2f}× hand-routed: the rest is building 100 Session records"
    out += res.values()
    return out
