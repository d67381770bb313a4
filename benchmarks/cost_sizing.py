"""Sizing on paper: Redis cores for a decision rate, and each hot function's ceiling per core.

Cores (primaries) for a rate of decisions = decisions/s × server µs per decision / (0.6 × 1e6):
each primary is one core kept at 60 % CPU. The ceiling of a function per core is measured with
`redis-benchmark -P 16` sending the real call to the ledger's server, so it includes the network
and protocol work of each call (reading, parsing, replying), not only the function's own time.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import redis

from benchmarks.cost_calls import HOT_CALLS, NOOP, Command, World, send_all

UTILISATION = 0.6
RATES = (10_000, 100_000, 1_000_000)


def cores_for(decisions_per_s: float, server_us_per_decision: float) -> float:
    return decisions_per_s * server_us_per_decision / (UTILISATION * 1e6)


def cores_table(server_us_per_decision: float) -> list[dict[str, Any]]:
    return [
        {"decisions_per_s": rate, "cores": round(cores_for(rate, server_us_per_decision), 1)}
        for rate in RATES
    ]


def _text(c: Command) -> list[str]:
    return [x.decode() if isinstance(x, bytes) else str(x) for x in c]


def redis_benchmark(url: str, command: Command, *, requests: int) -> float:
    """Requests/s of `command` from `redis-benchmark -P 16 -c 4` (ids with `__rand_int__` get
    a random number per call)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark not found (it ships with redis-server)")
    parts = urlsplit(url)
    args = [binary, "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    args += ["-n", str(requests), "-P", "16", "-c", "4", "-r", "1000000000", "--csv"]
    out = subprocess.run(
        [*args, *_text(command)], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rows = [row for row in csv.reader(io.StringIO(out)) if row]
    return float(rows[-1][1])


def command_line(command: Command) -> str:
    return " ".join(a if a and " " not in a else repr(a) for a in _text(command))


def ceilings(
    url: str, world: World, ledger: Sequence[dict[str, Any]], *, requests: int
) -> list[dict[str, Any]]:
    """Ceiling per core of PING, the no-op and every hot call that can be repeated on its own."""
    r = redis.Redis.from_url(url)
    server_us = {row["name"]: row["server_us"] for row in ledger}
    out: list[dict[str, Any]] = []
    try:
        for name, label, cmd in (("ping", "PING", ("PING",)), ("noop", "no-op FCALL_RO", NOOP)):
            out.append(
                {
                    "name": name,
                    "label": label,
                    "command": command_line(cmd),
                    "ops_per_s": round(redis_benchmark(url, cmd, requests=requests)),
                }
            )
        for hc in HOT_CALLS:
            row: dict[str, Any] = {"name": hc.name, "label": hc.label}
            us = server_us.get(hc.name)
            if us:
                row["server_bound_ops_per_s"] = round(1e6 / us)
            if hc.bench is None:
                row["ops_per_s"] = None
                row["note"] = "each call needs a setup of its own: not repeatable alone"
            else:
                send_all(r, hc.before(world, 0))
                cmd = tuple(hc.bench(world, 0).command())
                row["command"] = command_line(cmd)
                row["ops_per_s"] = round(redis_benchmark(url, cmd, requests=requests))
            out.append(row)
    finally:
        r.close()
    return out
