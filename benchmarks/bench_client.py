"""The client's own cost, standalone, one process, every case interleaved in one run:

* `cache.sessions.get` (sync and asyncio) against a raw `FCALL_RO` on one fixed redis-py
  connection returning the raw reply (the floor any client pays for the bytes on the wire);
* `run_many` of 100 `sessions.get` (parsed records, and raw replies) against a redis-py pipeline
  of 100 PINGs;
* the floors: the same pre-packed `FCALL_RO` on a blocking socket, and on a bare
  `asyncio.Protocol` of the standard event loop (and of uvloop when it is installed: `--uvloop`),
  with no adcache code at all.

`python -m benchmarks.bench_client [--url redis://...] [--calls N]` prints the table and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import hiredis
import redis
import redis.asyncio as aredis

from adcache import AdCache, Call, aio
from adcache import _generated as keys
from adcache._core import raw
from adcache.sessions import get_call
from benchmarks.env import BenchEnv
from benchmarks.harness import Result

N_IDS = 100
CALLERS = 8


def _ids(cache: AdCache) -> list[str]:
    ids = [f"bench-{uuid.uuid4().hex[:10]}" for _ in range(N_IDS)]
    for sid in ids:
        cache.sessions.create(
            sid, "bench-user", idle_ttl=600, max_lifetime=600, attributes={"k": "v"}, index=False
        )
    return ids


class _Bare(asyncio.Protocol):
    """The asyncio floor: one pre-packed command written, its reply parsed, the waiter woken."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiter: asyncio.Future[Any] | None = None

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        reply = self.reader.gets()
        if reply is not False and self.waiter is not None:
            self.waiter.set_result(reply)


def _new_loop(uv: bool) -> asyncio.AbstractEventLoop:
    if uv:
        import uvloop  # in the dev extras, not a client dependency

        return uvloop.new_event_loop()  # type: ignore[no-any-return]
    return asyncio.new_event_loop()


def measure(
    url: str, calls: int = 20000, rounds: int = 40, *, uv: bool = False
) -> dict[str, float]:
    """µs per call (per batch for the batched cases), the best round of each case."""
    cache = AdCache(redis.Redis.from_url(url))
    ids = _ids(cache)
    keys_ = [keys.session(s) for s in ids]
    fixed = redis.Redis.from_url(url).connection_pool.get_connection()
    pipe_client = redis.Redis.from_url(url)
    loop = _new_loop(uv)
    host, port = cache.nodes()[0].name.rsplit(":", 1)
    packed = [hiredis.pack_command(("FCALL_RO", "ac_session_get", 1, k)) for k in keys_]
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport, bare = loop.run_until_complete(loop.create_connection(_Bare, host, int(port)))
    acache = aio.AdCache(aredis.Redis.from_url(url))
    loop.run_until_complete(acache.sessions.get(ids[0]))
    cache.sessions.get(ids[0])

    def raw_fcall(n: int) -> None:
        send, read = fixed.send_command, fixed.read_response
        for i in range(n):
            send("FCALL_RO", "ac_session_get", 1, keys_[i % N_IDS])
            read()

    def bare_socket(n: int) -> None:
        reader = hiredis.Reader()
        for i in range(n):
            sock.sendall(packed[i % N_IDS])
            reply = False
            while reply is False:
                reader.feed(sock.recv(65536))
                reply = reader.gets()

    async def _abare(n: int) -> None:
        for i in range(n):
            bare.waiter = loop.create_future()
            transport.write(packed[i % N_IDS])
            await bare.waiter

    def abare(n: int) -> None:
        loop.run_until_complete(_abare(n))

    def ours(n: int) -> None:
        get = cache.sessions.get
        for i in range(n):
            get(ids[i % N_IDS])

    def ours_read(n: int) -> None:
        get = cache.sessions.get
        for i in range(n):
            s = get(ids[i % N_IDS])
            assert s is not None and s.user_id  # decodes the record

    async def _aours(n: int) -> None:
        get = acache.sessions.get
        for i in range(n):
            await get(ids[i % N_IDS])

    def aours(n: int) -> None:
        loop.run_until_complete(_aours(n))

    # Eight callers at once, the way a server uses a client: threads sharing the sync client
    # against tasks sharing the asyncio one (µs per call = the wall time / the calls).
    pool = ThreadPoolExecutor(CALLERS)

    def threads(n: int) -> None:
        list(pool.map(ours, [max(1, n // CALLERS)] * CALLERS))

    async def _tasks(n: int) -> None:
        await asyncio.gather(*(_aours(max(1, n // CALLERS)) for _ in range(CALLERS)))

    def tasks(n: int) -> None:
        loop.run_until_complete(_tasks(n))

    def ping100(n: int) -> None:
        for _ in range(n):
            p = pipe_client.pipeline(transaction=False)
            for _ in range(100):
                p.ping()
            p.execute()

    def fcall100(n: int) -> None:
        for _ in range(n):
            p = pipe_client.pipeline(transaction=False)
            for k in keys_:
                p.execute_command("FCALL_RO", "ac_session_get", 1, k)
            p.execute()

    def many_parsed(n: int) -> None:
        for _ in range(n):
            cache.run_many([get_call(s) for s in ids])

    def many_raw(n: int) -> None:
        for _ in range(n):
            cache.run_many([Call("ac_session_get", (k,), (), raw) for k in keys_])

    async def _amany(n: int) -> None:
        for _ in range(n):
            await acache.run_many([get_call(s) for s in ids])

    def amany_parsed(n: int) -> None:
        loop.run_until_complete(_amany(n))

    single: dict[str, Callable[[int], None]] = {
        "floor: pre-packed FCALL_RO on a blocking socket": bare_socket,
        f"floor: pre-packed FCALL_RO on a bare asyncio.Protocol ({LOOP[uv]})": abare,
        "raw FCALL_RO, fixed connection, raw reply": raw_fcall,
        "cache.sessions.get": ours,
        "cache.sessions.get, reading a field": ours_read,
        f"aio cache.sessions.get ({LOOP[uv]})": aours,
        f"cache.sessions.get, {CALLERS} threads": threads,
        f"aio cache.sessions.get, {CALLERS} tasks ({LOOP[uv]})": tasks,
    }
    batched: dict[str, Callable[[int], None]] = {
        "redis-py pipeline of 100 PING": ping100,
        "redis-py pipeline of 100 FCALL_RO ac_session_get (raw)": fcall100,
        "run_many 100 sessions.get, parsed": many_parsed,
        "run_many 100 sessions.get, raw": many_raw,
        f"aio run_many 100 sessions.get, parsed ({LOOP[uv]})": amany_parsed,
    }
    best: dict[str, float] = {}
    per_round = max(1, calls // rounds)
    per_round_batched = max(1, per_round // 40)
    for fns, n in ((single, per_round), (batched, per_round_batched)):
        for fn in fns.values():
            fn(max(1, n // 10))  # warm up
        for _ in range(rounds):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn(n)
                us = (time.perf_counter() - t0) / n * 1e6
                best[name] = min(best.get(name, us), us)
    # What the server alone spends on one batch of 100 (Lua and the commands inside it), which
    # no client can go below: INFO commandstats over 50 batches.
    admin = redis.Redis.from_url(url)
    noop = Call("ac_version", (), (), raw)
    for name, batch in (
        ("100 FCALL_RO ac_session_get", lambda: many_raw(50)),
        (
            "100 no-op FCALL_RO ac_version",
            lambda: [cache.run_many([noop] * 100) for _ in range(50)],
        ),
    ):
        admin.config_resetstat()
        batch()
        stats = admin.info("commandstats")
        best[f"server time of {name} (INFO commandstats)"] = (
            sum(v["usec"] for k, v in stats.items() if k.startswith("cmdstat_fcall")) / 50
        )
    admin.close()
    pool.shutdown()
    loop.run_until_complete(acache.aclose())
    transport.close()
    sock.close()
    loop.close()
    cache.close()
    pipe_client.close()
    fixed.disconnect()
    return best


LOOP = {False: "asyncio loop", True: "uvloop"}


def ratios(t: dict[str, float]) -> dict[str, float]:
    raw_us = t["raw FCALL_RO, fixed connection, raw reply"]
    ping = t["redis-py pipeline of 100 PING"]
    loop = next(k.rsplit("(", 1)[1][:-1] for k in t if k.startswith("aio cache.sessions.get"))
    aget, sget = t[f"aio cache.sessions.get ({loop})"], t["cache.sessions.get"]
    afloor = t[f"floor: pre-packed FCALL_RO on a bare asyncio.Protocol ({loop})"]
    sfloor = t["floor: pre-packed FCALL_RO on a blocking socket"]
    return {
        "sessions.get / raw FCALL_RO (target <= 1.15)": t["cache.sessions.get"] / raw_us,
        "sessions.get reading a field / raw FCALL_RO": t["cache.sessions.get, reading a field"]
        / raw_us,
        "aio sessions.get / sync sessions.get (target <= 1.10)": aget / sget,
        f"aio / sync sessions.get, {CALLERS} callers at once": t[
            f"aio cache.sessions.get, {CALLERS} tasks ({loop})"
        ]
        / t[f"cache.sessions.get, {CALLERS} threads"],
        "asyncio floor / blocking-socket floor": afloor / sfloor,
        "asyncio floor / sync sessions.get": afloor / sget,
        "µs adcache adds over its floor, aio": aget - afloor,
        "µs adcache adds over its floor, sync": sget - sfloor,
        "run_many parsed throughput / 100 PINGs (target >= 0.6)": ping
        / t["run_many 100 sessions.get, parsed"],
        "run_many raw throughput / 100 PINGs (target >= 0.8)": ping
        / t["run_many 100 sessions.get, raw"],
        "run_many parsed throughput / redis-py pipeline of the same 100 FCALL_RO": t[
            "redis-py pipeline of 100 FCALL_RO ac_session_get (raw)"
        ]
        / t["run_many 100 sessions.get, parsed"],
        "ceiling of any run_many: 100 PINGs / server time of the 100 calls": ping
        / t["server time of 100 FCALL_RO ac_session_get (INFO commandstats)"],
        "ceiling of any 100 FCALLs: 100 PINGs / server time of 100 no-op FCALL_RO": ping
        / t["server time of 100 no-op FCALL_RO ac_version (INFO commandstats)"],
        "aio run_many parsed / sync run_many parsed (time)": t[
            f"aio run_many 100 sessions.get, parsed ({loop})"
        ]
        / t["run_many 100 sessions.get, parsed"],
    }


def report(t: dict[str, float]) -> str:
    lines = ["| case | µs per call (best round) |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in ratios(t).items()]
    return "\n".join(lines)


def run(env: BenchEnv) -> list[Result]:
    """The suite's entry (`python -m benchmarks --only client`)."""
    t = measure(env.standalone_url, calls=env.calls(20000))
    out = []
    for name, us in t.items():
        batch = 100 if "100" in name else 1
        out.append(
            Result("client", name, batch, us / 1e6, batch / (us / 1e6), us, us, note="best round")
        )
    for name, v in ratios(t).items():
        out[0].extra[name] = round(v, 3)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--url", help="a standalone server with the library (default: start one)")
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--uvloop", action="store_true", help="the asyncio cases on uvloop")
    args = ap.parse_args(argv)
    url: Any = args.url
    server = None
    if url is None:
        from adcache_loader.deploy import deploy
        from adcache_loader.servers import RedisServer

        server = RedisServer().start()
        url = server.url
        deploy(url)
    try:
        print(report(measure(url, calls=args.calls, uv=args.uvloop)))
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
