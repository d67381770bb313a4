"""The multi-process phase: the mixed ad-serving request and each hot-path operation from N client
processes at once (spawn context; each process builds its own clients), each case for a fixed
time window; aggregated ops/s and p50/p99 over every process's samples.

Also the scaling run: the mixed request on a 1-primary and on the 3-primary cluster.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adcache import AdCache
from benchmarks import hotpath
from benchmarks.harness import Result, _percentile

MIXED = "mixed ad request (5 rounds)"
NOOP = "FCALL_RO ac_version (no-op)"
MAX_SAMPLES = 50_000  # per process, enough for a p99

_clients: dict[str, AdCache] = {}


def _client(url: str) -> AdCache:
    if url not in _clients:
        _clients[url] = AdCache.from_url(url)
    return _clients[url]


def _ready(_: int) -> int:
    time.sleep(0.3)  # hold the worker so every process takes one
    return os.getpid()


@dataclass(frozen=True)
class Task:
    url: str
    tag: str
    case: str
    start_at: float  # time.time() at which every process starts measuring
    seconds: float


def _fn(ac: AdCache, task: Task) -> Callable[[], object]:
    prefix = f"mp-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    if task.case == MIXED:
        return hotpath.mixed_request(ac, task.tag, prefix)
    if task.case == NOOP:
        return lambda: ac.run(hotpath.NOOP)
    for op in hotpath.ops(task.tag):
        if op.name == task.case:
            src = op.calls(prefix)
            return lambda: ac.run(src())
    raise KeyError(task.case)


def _work(task: Task) -> tuple[int, float, list[float], int]:
    """Run one case until the shared deadline: (ops, seconds, latencies, errors)."""
    ac = _client(task.url)
    fn = _fn(ac, task)
    for _ in range(20):
        fn()
    clock = time.perf_counter
    delay = task.start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    lat: list[float] = []
    errors = 0
    t_start = clock()
    end = t_start + task.seconds - max(0.0, time.time() - task.start_at)
    t = t_start
    while t < end:
        t0 = clock()
        try:
            fn()
        except Exception:  # counted, and the run goes on: the report shows them
            errors += 1
        t = clock()
        lat.append(t - t0)
    elapsed = t - t_start
    step = max(1, len(lat) // MAX_SAMPLES)
    return len(lat), elapsed, lat[::step], errors


def run_cases(
    urls: dict[str, str],
    tag: str,
    cases: list[str],
    *,
    processes: int,
    seconds: float,
    group: str = "multi-process",
    rounds: int = 1,
) -> list[Result]:
    """Each case on each named URL (`urls`: label -> cluster URL) from `processes` processes."""
    out: list[Result] = []
    ctx = mp.get_context("spawn")
    # (label, case) -> per-process (ops, seconds, latencies, errors), over every round
    acc: dict[tuple[str, str], list[tuple[int, float, list[float], int]]] = {}
    with ctx.Pool(processes) as pool:
        pool.map(_ready, range(processes), chunksize=1)
        # Rounds alternate the targets, so a noisy neighbour hits both alike.
        for _ in range(rounds):
            for case in cases:
                for label, url in urls.items():
                    task = Task(url, tag, case, time.time() + 0.5, seconds / rounds)
                    acc.setdefault((label, case), []).extend(
                        pool.map(_work, [task] * processes, chunksize=1)
                    )
    for (label, case), parts in acc.items():
        ops = sum(p[0] for p in parts)
        # every process ran for the same windows: throughputs add up across processes
        ops_s = ops / (sum(p[1] for p in parts) / processes) if parts else 0.0
        lat = sorted(x for p in parts for x in p[2])
        errors = sum(p[3] for p in parts)
        out.append(
            Result(
                group=f"{group} ({label}, {processes} processes)",
                case=case,
                ops=ops,
                seconds=sum(p[1] for p in parts) / processes,
                ops_per_s=ops_s,
                p50_us=_percentile(lat, 0.50) * 1e6,
                p99_us=_percentile(lat, 0.99) * 1e6,
                note=f"{errors} failed calls" if errors else "",
                extra={
                    "kind": "multiprocess",
                    "cluster": label,
                    "processes": processes,
                    "errors": errors,
                },
            )
        )
    return out


def phase(cluster_url: str, tag: str, *, processes: int, seconds: float) -> list[Result]:
    """The mixed request, the no-op and every hot-path operation from N processes."""
    cases = [MIXED, NOOP] + [op.name for op in hotpath.ops(tag)]
    return run_cases({"3 primaries": cluster_url}, tag, cases, processes=processes, seconds=seconds)


def scaling(
    one_url: str, three_url: str, tag: str, *, processes: int, seconds: float
) -> tuple[list[Result], dict[str, Any]]:
    """The mixed request on 1 and 3 primaries; the ratio of their throughputs."""
    rows = run_cases(
        {"1 primary": one_url, "3 primaries": three_url},
        tag,
        [MIXED, "profile get"],
        processes=processes,
        seconds=2 * seconds,
        group="scaling",
        rounds=3,
    )
    by = {(r.extra["cluster"], r.case): r for r in rows}
    summary: dict[str, Any] = {"processes": processes}
    for case in (MIXED, "profile get"):
        one, three = by[("1 primary", case)], by[("3 primaries", case)]
        summary[case] = {
            "ops_per_s_1": round(one.ops_per_s),
            "ops_per_s_3": round(three.ops_per_s),
            "ratio": round(three.ops_per_s / one.ops_per_s, 3) if one.ops_per_s else None,
        }
        three.note = f"{three.ops_per_s / one.ops_per_s:.2f}× 1 primary" if one.ops_per_s else ""
    return rows, summary
