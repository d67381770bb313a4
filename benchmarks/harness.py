"""Side-by-side measurement: cases are run in interleaved rounds in one process, so a noisy
neighbour slows every case alike and the ratios between them stay meaningful.

Each case is a callable doing `batch` operations per call; latency is per call, throughput per op.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import redis


@dataclass
class Result:
    group: str
    case: str
    ops: int
    seconds: float
    ops_per_s: float
    p50_us: float
    p99_us: float
    round_trips_per_op: float | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def side_by_side(
    group: str,
    cases: dict[str, Callable[[], object]],
    *,
    calls: int,
    batch: int = 1,
    rounds: int = 5,
    warmup: int = 20,
) -> dict[str, Result]:
    """Run every case `calls` times in total, split into `rounds` interleaved rounds."""
    lat: dict[str, list[float]] = {name: [] for name in cases}
    spent: dict[str, float] = dict.fromkeys(cases, 0.0)
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, calls // rounds)
    clock = time.perf_counter
    for _ in range(rounds):
        for name, fn in cases.items():
            samples = lat[name]
            t_round = clock()
            for _ in range(per_round):
                t0 = clock()
                fn()
                samples.append(clock() - t0)
            spent[name] += clock() - t_round
    out = {}
    for name, samples in lat.items():
        samples.sort()
        ops = len(samples) * batch
        out[name] = Result(
            group=group,
            case=name,
            ops=ops,
            seconds=spent[name],
            ops_per_s=ops / spent[name] if spent[name] else 0.0,
            p50_us=_percentile(samples, 0.50) * 1e6,
            p99_us=_percentile(samples, 0.99) * 1e6,
        )
    return out


def commandstats(clients: Sequence[redis.Redis]) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in clients:
        for name, st in c.info("commandstats").items():
            total[name] = total.get(name, 0) + int(st["calls"])
    return total


def commands_per_op(
    clients: Sequence[redis.Redis], fn: Callable[[], object], ops: int = 50
) -> dict[str, float]:
    """What the servers executed per operation, from INFO commandstats (counted, not assumed).

    Redis counts the commands a function runs inside itself as well, so for an FCALL path the
    round trips are the `fcall`/`fcall_ro` entries; for a client-side path every entry is a command
    the client sent (see `round_trips`).
    """
    fn()  # one-time costs (library checks, connections) are not part of the steady state
    for c in clients:
        c.config_resetstat()
    for _ in range(ops):
        fn()
    stats = commandstats(clients)
    return {
        k.removeprefix("cmdstat_"): v / ops
        for k, v in stats.items()
        if not k.startswith(("cmdstat_config", "cmdstat_info"))
    }


SCRIPT_COMMANDS = ("fcall", "fcall_ro", "eval", "evalsha", "eval_ro", "evalsha_ro")


def round_trips(per_op: dict[str, float], *, scripted: bool) -> float:
    """Requests per operation: the script calls only (their inner commands run server-side), or
    every command for a path that runs no scripts."""
    if scripted:
        return sum(v for k, v in per_op.items() if k in SCRIPT_COMMANDS)
    return sum(per_op.values())


def ratio(a: Result, b: Result) -> float:
    return a.ops_per_s / b.ops_per_s if b.ops_per_s else float("nan")


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0
