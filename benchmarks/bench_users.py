"""Users: profile get / patch / activity, session touch with context, session context and a
user's segment list, each against a predecessor-style baseline (client-side logic, one round trip
per step, floats and JSON) and the no-op `FCALL_RO ac_version`, in one run on one server."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import redis

from adcache import AdCache
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

N_USERS = 200


def _old_key(kind: str, id_: str) -> str:
    return f"old:{kind}:{id_}"


def _seed(ac: AdCache, r: redis.Redis, run: str) -> tuple[list[str], list[str]]:
    users = [f"bench-{run}-u{i}" for i in range(N_USERS)]
    sids = [f"bench-{run}-s{i}" for i in range(N_USERS)]
    now = datetime.now().isoformat()
    for i, (u, s) in enumerate(zip(users, sids, strict=True)):
        ac.profiles.set(
            u,
            idle_ttl=3600,
            score_milli=75_500,
            segment="high_value",
            interests=["tech", "gaming", "sports"],
            demographics={"age": "28", "gender": "M", "location": "Seoul"},
        )
        r.hset(
            _old_key("profile", u),
            mapping={
                "user_id": u,
                "interests": json.dumps(["tech", "gaming", "sports"]),
                "demographics": json.dumps({"age": 28, "gender": "M", "location": "Seoul"}),
                "behavior_score": 75.5,
                "last_activity": now,
                "segment": "high_value",
            },
        )
        r.expire(_old_key("profile", u), 3600)
        ac.sessions.create(s, u, idle_ttl=1800, max_lifetime=3600)
        r.hset(
            _old_key("session", s), mapping={"session_id": s, "user_id": u, "last_activity": now}
        )
        r.expire(_old_key("session", s), 1800)
        for j in range(8):
            seg = f"seg{(i + j) % 20}"
            ac.segments.add(u, seg, ttl=3600)
            r.rpush(_old_key("segments", u), seg, seg)  # the old list kept duplicates
        for j in range(20):
            cats = [f"cat{(i + j) % 7}", f"cat{(i + j) % 11}"]
            ac.sessions.track(s, categories=cats, keywords=[f"kw{j % 5}"], referrer="r.example")
            r.lpush(
                _old_key("history", s),
                json.dumps({"t": time.time(), "c": cats, "k": [f"kw{j % 5}"], "r": "r.example"}),
            )
    return users, sids


def _cycle(items: list[str]) -> Callable[[], str]:
    i = 0

    def nxt() -> str:
        nonlocal i
        i += 1
        return items[i % len(items)]

    return nxt


def run(env: BenchEnv) -> list[Result]:
    out: list[Result] = []
    ac = env.adcache()
    r = ac.redis
    users, sids = _seed(ac, r, uuid.uuid4().hex[:6])
    user, sid = _cycle(users), _cycle(sids)
    noop: Callable[[], object] = lambda: r.execute_command("FCALL_RO", "ac_version", 0)  # noqa: E731

    def group(
        name: str, ours: Callable[[], object], old: Callable[[], object], old_pipelined: int = 0
    ) -> None:
        res = side_by_side(
            name,
            {"adcache": ours, "predecessor-style": old, "FCALL_RO ac_version (no-op)": noop},
            calls=env.calls(5000),
        )
        o, p, n = res["adcache"], res["predecessor-style"], res["FCALL_RO ac_version (no-op)"]
        o.round_trips_per_op = round_trips(commands_per_op([r], ours), scripted=True)
        # Commands sent in one pipeline share a round trip.
        p.round_trips_per_op = (
            round_trips(commands_per_op([r], old), scripted=False) - old_pipelined
        )
        n.round_trips_per_op = 1.0
        o.note = f"{ratio(o, p):.2f}× predecessor, {ratio(o, n):.2f}× no-op"
        out.extend(res.values())

    # ---- profile get ----
    def old_get() -> object:
        d = r.hgetall(_old_key("profile", user()))
        return (
            json.loads(d[b"interests"]),
            json.loads(d[b"demographics"]),
            float(d[b"behavior_score"]),
            datetime.fromisoformat(d[b"last_activity"].decode()),
        )

    group("profile get", lambda: ac.profiles.get(user()), old_get)

    # ---- profile patch (one field): ours is one call; the old way read, changed, wrote ----
    def old_patch() -> None:
        u = user()
        k = _old_key("profile", u)
        d = r.hgetall(k)
        demo = json.loads(d[b"demographics"])
        demo["age"] = 29
        pipe = r.pipeline(transaction=False)
        pipe.hset(k, mapping={"demographics": json.dumps(demo)})
        pipe.expire(k, 3600)
        pipe.execute()

    group(
        "profile patch",
        lambda: ac.profiles.patch(user(), demographics={"age": "29"}),
        old_patch,
        old_pipelined=1,
    )

    # ---- activity: score + last activity (+ TTL for ours) vs the old 3 round trips ----
    def old_activity() -> None:
        k = _old_key("profile", user())
        r.hset(k, "last_activity", datetime.now().isoformat())
        current = r.hget(k, "behavior_score")
        if current:
            r.hset(k, "behavior_score", float(current) + 0.25)

    group("profile activity", lambda: ac.profiles.activity(user(), 250), old_activity)

    # ---- session touch with context ----
    def old_track() -> None:
        s = sid()
        k, h = _old_key("session", s), _old_key("history", s)
        r.hset(k, "last_activity", datetime.now().isoformat())
        r.expire(k, 1800)
        r.lpush(h, json.dumps({"t": time.time(), "c": ["cat1", "cat2"], "k": ["kw"], "r": "x"}))
        r.ltrim(h, 0, 49)
        r.expire(h, 1800)

    group(
        "session touch with context",
        lambda: ac.sessions.track(
            sid(), categories=["cat1", "cat2"], keywords=["kw"], referrer="x"
        ),
        old_track,
    )

    # ---- session context (weighted interests) ----
    def old_context() -> object:
        now = time.time()
        w: dict[str, float] = {}
        for raw in r.lrange(_old_key("history", sid()), 0, 49):
            e = json.loads(raw)
            x = math.pow(2, -(now - e["t"]) / 600)
            for c in e["c"]:
                w[c] = w.get(c, 0.0) + x
        return sorted(w.items(), key=lambda kv: -kv[1])[:20]

    group("session context", lambda: ac.sessions.context(sid()), old_context)

    # ---- a user's segments ----
    def old_segments() -> object:
        return sorted({x.decode() for x in r.lrange(_old_key("segments", user()), 0, -1)})

    group("segment list", lambda: ac.segments.of(user()), old_segments)

    # ---- cluster: 100 profiles at once ----
    if env.cluster_url is None:
        return out
    acc = env.adcache_cluster()
    rc = acc.redis
    cusers = [f"bench-{uuid.uuid4().hex[:6]}-c{i}" for i in range(100)]
    for u in cusers:
        acc.profiles.set(u, idle_ttl=3600, score_milli=1, segment="s", interests=["a", "b"])
        rc.hset(_old_key("profile", u), mapping={"behavior_score": 0.001, "segment": "s"})

    def old_many() -> object:
        return [rc.hgetall(_old_key("profile", u)) for u in cusers]

    res = side_by_side(
        "cluster profiles×100",
        {"adcache get_many": lambda: acc.profiles.get_many(cusers), "predecessor-style": old_many},
        calls=env.calls(300),
        batch=100,
    )
    o, p = res["adcache get_many"], res["predecessor-style"]
    o.note = f"{ratio(o, p):.2f}× predecessor (one pipelined round per node vs one per profile)"
    out.extend(res.values())
    return out
