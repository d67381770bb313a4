"""What the cost ledger measures: blocks of single calls read from `INFO commandstats`, the same
inner commands replayed alone in MULTI, and the ad decision.

Every block reads the counters before and after (no CONFIG RESETSTAT: a given server's counters
are left alone), so the server µs of a block is the `usec` of its `fcall`/`fcall_ro` rows divided
by its calls. The block's wall time gives the client-side calls/s of one client sending single
calls.
"""

from __future__ import annotations

import re
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from adcache import AdCache
from adcache_loader import simulate as sim
from benchmarks.cost_calls import (
    FCALLS,
    NOOP,
    NOT_INNER,
    Command,
    HotCall,
    World,
    commandstats,
    delta,
    function_calls,
    inner,
    send_all,
)

CAPTURE_INDEX = 10_000_000  # the call whose commands are captured: ids no measured call uses
SENTINEL = "cost-ledger-capture-end"
TRANSACTION = frozenset({"multi", "exec"})


@dataclass
class Block:
    calls: int
    server_us: float  # per call: usec of the fcall/fcall_ro rows / calls
    calls_per_s: float
    inner: dict[str, int]  # totals over the block
    function_calls: int


def run_block(
    r: redis.Redis,
    commands: Sequence[Command],
    prepare: Sequence[Command] = (),
    setups: Sequence[Sequence[Command]] | None = None,
) -> Block:
    """The calls one at a time, `prepare` before the counters are read; with `setups`, each
    call's own setup goes in the same round trip as the call and is taken out of the counts."""
    send_all(r, prepare)
    before = commandstats(r)
    t0 = time.perf_counter()
    if setups is None:
        for c in commands:
            r.execute_command(*c)
    else:
        for c, setup in zip(commands, setups, strict=True):
            pipe = r.pipeline(transaction=False)
            for s in setup:
                pipe.execute_command(*s)
            pipe.execute_command(*c)
            pipe.execute()
    spent = time.perf_counter() - t0
    d = delta(before, commandstats(r))
    n = len(commands)
    usec = sum(d.get(f, (0, 0))[1] for f in FCALLS)
    counts = inner(d)
    for setup in setups or ():
        for s in setup:
            name = str(s[0]).lower()
            counts[name] -= 1
    counts = {k: v for k, v in counts.items() if v}
    return Block(n, usec / n, n / spent, counts, function_calls(d))


def noop_block(r: redis.Redis, n: int) -> Block:
    return run_block(r, [NOOP] * n)


# ---- the same commands alone ----

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESC = {"n": b"\n", "r": b"\r", "t": b"\t", "a": b"\a", "b": b"\b", '"': b'"', "\\": b"\\"}


def _unescape(s: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "\\" and i + 1 < len(s):
            nxt = s[i + 1]
            if nxt == "x" and i + 3 < len(s):
                out.append(int(s[i + 2 : i + 4], 16))
                i += 4
                continue
            out += _ESC.get(nxt, nxt.encode())
            i += 2
            continue
        out += ch.encode("latin-1") if ord(ch) < 256 else ch.encode()
        i += 1
    return bytes(out)


def parse_monitor_line(line: str) -> tuple[str, Command]:
    """(source, command) of a MONITOR line: `<time> [<db> <source>] "arg" "arg" ...`."""
    head, _, rest = line.partition("] ")
    source = head.rsplit(" ", 1)[-1]
    return source, tuple(_unescape(m) for m in _TOKEN.findall(rest))


def capture(url: str, r: redis.Redis, world: World, hc: HotCall) -> list[Command]:
    """The commands one call of `hc` runs inside the server, as MONITOR shows them."""
    send_all(r, hc.before(world, CAPTURE_INDEX))
    watcher = redis.Redis.from_url(url, socket_timeout=30)  # never wait forever on MONITOR
    try:
        with watcher.monitor() as m:
            r.execute_command(*hc.command(world, CAPTURE_INDEX))
            r.execute_command("ECHO", SENTINEL)
            out: list[Command] = []
            while True:
                raw: Any = m.connection.read_response()
                line = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
                source, cmd = parse_monitor_line(line)
                if source != "lua" and cmd and cmd[0].lower() == b"echo" and SENTINEL in line:
                    return out
                if source == "lua":
                    out.append(cmd)
    finally:
        watcher.close()


def replay_block(r: redis.Redis, commands: Sequence[Command], n: int, per_pipe: int = 50) -> float:
    """µs of `commands` sent alone, each time in one MULTI/EXEC: usec of every row but
    multi/exec (and the reading), divided by `n`."""
    if not commands:
        return 0.0
    before = commandstats(r)
    for s in range(0, n, per_pipe):
        pipe = r.pipeline(transaction=False)
        for _ in range(min(per_pipe, n - s)):
            pipe.execute_command("MULTI")
            for c in commands:
                pipe.execute_command(*c)
            pipe.execute_command("EXEC")
        pipe.execute(raise_on_error=False)
    d = delta(before, commandstats(r))
    usec = sum(u for k, (_, u) in d.items() if k not in TRANSACTION and k not in NOT_INNER)
    return usec / n


# ---- one hot call over the rounds ----


@dataclass
class Rounds:
    server_us: list[float] = field(default_factory=list)
    noop_us: list[float] = field(default_factory=list)
    raw_us: list[float] = field(default_factory=list)
    calls_per_s: list[float] = field(default_factory=list)
    noop_calls_per_s: list[float] = field(default_factory=list)
    inner: dict[str, int] = field(default_factory=dict)
    calls: int = 0
    function_calls: int = 0

    def add(self, fn: Block, noop: Block, raw_us: float) -> None:
        self.server_us.append(fn.server_us)
        self.noop_us.append(noop.server_us)
        self.raw_us.append(raw_us)
        self.calls_per_s.append(fn.calls_per_s)
        self.noop_calls_per_s.append(noop.calls_per_s)
        for k, v in fn.inner.items():
            self.inner[k] = self.inner.get(k, 0) + v
        self.calls += fn.calls
        self.function_calls += fn.function_calls


def hot_round(
    r: redis.Redis, world: World, hc: HotCall, start: int, n: int, captured: Sequence[Command]
) -> tuple[Block, Block, float]:
    """One round of `hc`: the no-op, then n calls (ids from `start`), then the replay."""
    idx = range(start, start + n)
    commands = [hc.command(world, i) for i in idx]
    noop = noop_block(r, n)
    if hc.setup_each_call:
        fn = run_block(r, commands, setups=[hc.before(world, i) for i in idx])
    else:
        fn = run_block(r, commands, [c for i in idx for c in hc.before(world, i)])
    return fn, noop, replay_block(r, captured, n)


def summarise(hc: HotCall, rs: Rounds, captured: Sequence[Command]) -> dict[str, Any]:
    med = statistics.median
    server, noop, raw = med(rs.server_us), med(rs.noop_us), med(rs.raw_us)
    ratio = server / noop if noop else float("nan")
    tput: float | None = med(
        a / b for a, b in zip(rs.calls_per_s, rs.noop_calls_per_s, strict=True)
    )
    if hc.setup_each_call:  # its round trips carried the setup too
        tput = None
    per_call = {k: round(v / rs.calls, 3) for k, v in sorted(rs.inner.items())}
    return {
        "name": hc.name,
        "label": hc.label,
        "function": hc.function,
        "server_us": round(server, 2),
        "noop_server_us": round(noop, 2),
        "ratio": round(ratio, 2),
        "target": hc.target,
        "met": ratio <= hc.target,
        "inner_commands": per_call,
        "inner_total": round(sum(per_call.values()), 3),
        "raw_us": round(raw, 2),
        "raw_commands": [" ".join(x.decode("latin-1") for x in c[:1]) for c in captured],
        "lua_overhead_us": round(server - raw, 2),
        "calls_per_s": round(med(rs.calls_per_s)),
        "noop_calls_per_s": round(med(rs.noop_calls_per_s)),
        "throughput_ratio": None if tput is None else round(tput, 2),
        "throughput_met": None if tput is None else tput >= 0.8,
        "function_calls_per_call": rs.function_calls / rs.calls,
        "rounds": {
            "server_us": [round(x, 2) for x in rs.server_us],
            "noop_server_us": [round(x, 2) for x in rs.noop_us],
            "raw_us": [round(x, 2) for x in rs.raw_us],
        },
    }


# ---- the ad decision ----

DECIDE_TARGET = 60.0
DECIDE_WARMUP = 20


def measure_decide(url: str, r: redis.Redis, *, rounds: int, n: int) -> dict[str, Any]:
    """`cache.decide.decide` on the benchmark's population (bench_decide's: 400 users, 60
    campaigns, budgets large enough to serve all along): per round, n no-op calls, then n
    decisions (their deferred records flushed), read from the counters."""
    tag = f"cd{uuid.uuid4().hex[:6]}"
    total = rounds * n + DECIDE_WARMUP
    pop = sim.generate(
        tag, n_users=400, n_campaigns=60, n_requests=total, seed=13, budget_scale=50.0
    )
    ac = AdCache(redis.Redis.from_url(url))
    try:
        sim.setup(ac, pop)
        reqs = iter(pop.requests)
        for _ in range(DECIDE_WARMUP):
            ac.decide.decide(next(reqs))
        ac.decide.flush()
        per_us, noop_us, fpd, rounds_pd, served = [], [], [], [], []
        inner_total: dict[str, int] = {}
        decisions_total = 0
        for _ in range(rounds):
            noop = noop_block(r, n)
            before = commandstats(r)
            ds = [ac.decide.decide(next(reqs)) for _ in range(n)]
            ac.decide.flush()
            d = delta(before, commandstats(r))
            usec = sum(d.get(f, (0, 0))[1] for f in FCALLS)
            per_us.append(usec / n)
            noop_us.append(noop.server_us)
            fpd.append(function_calls(d) / n)
            rounds_pd.append(sum(x.rounds for x in ds) / n)
            served.append(sum(x.served for x in ds) / n)
            for k, v in inner(d).items():
                inner_total[k] = inner_total.get(k, 0) + v
            decisions_total += n
    finally:
        ac.close()
    med = statistics.median
    server, noop_med = med(per_us), med(noop_us)
    ratio = server / noop_med if noop_med else float("nan")
    return {
        "name": "decide",
        "label": "decide (one ad request)",
        "decisions": decisions_total,
        "function_calls_per_decision": round(med(fpd), 2),
        "server_us": round(server, 1),
        "noop_server_us": round(noop_med, 2),
        "ratio": round(ratio, 1),
        "target": DECIDE_TARGET,
        "met": ratio <= DECIDE_TARGET,
        "rounds_per_decision": round(med(rounds_pd), 2),
        "max_rounds": 4,
        "served": round(med(served), 3),
        "inner_commands": {
            k: round(v / decisions_total, 2) for k, v in sorted(inner_total.items())
        },
        "rounds": {"server_us": [round(x, 1) for x in per_us], "noop_server_us": noop_us},
    }
