"""`python -m benchmarks.cost`: the cost ledger, what each hot-path function costs the server.

    python -m benchmarks.cost [--quick] [--json PATH] [--url redis://127.0.0.1:PORT]
                              [--calls N] [--rounds R] [--sizing] [--no-decide]
                              [--baseline-lib FILE]
    python -m benchmarks.cost --write-budget [--url ...]

Starts a throwaway standalone redis-server (unless --url) and deploys the library, seeds the
entities of `benchmarks/cost_calls.py` and, in R interleaved rounds, for each hot call: N no-op
`FCALL_RO ac_version 0`, N calls of the function, and N replays of the same inner commands alone
in one MULTI each. Prints per function the server µs per call (INFO commandstats), the no-op's in
the same round, the ratio and its target, the inner commands per call, the µs of those commands
alone, the Lua overhead (the difference) and one client's calls/s against the no-op's; then the
ad decision. Medians over the rounds. `--sizing` adds the cores table and each function's
ceiling per core from `redis-benchmark -P 16`. `--write-budget` rewrites the guard's budget
(`benchmarks/cost_budget.yaml`) from the library as it is and runs nothing else.
`--baseline-lib FILE` (an earlier rendered library, e.g. `git show REV:functions/adcache.lua`)
measures it side by side in the same rounds, on a second throwaway server seeded alike (seeded
with this library, then replaced by the baseline's), and prints each hot call's server µs under
both with the ratio: before and after in one run. Rows whose function the baseline lacks are
skipped there; the decision runs on this library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import redis
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adcache import AdCache
from adcache_loader.deploy import deploy
from adcache_loader.render import render
from adcache_loader.servers import RedisServer, check_loopback_url
from benchmarks import cost_budget, cost_measure, cost_sizing
from benchmarks.cost_calls import HOT_CALLS, World, seed

FULL = {"calls": 2000, "rounds": 3, "decisions": 600, "bench_requests": 200_000}
QUICK = {"calls": 300, "rounds": 3, "decisions": 150, "bench_requests": 50_000}
WARMUP = 20


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """The given loopback server, or a throwaway one; the library deployed on it."""
    started = None
    if url is None:
        started = RedisServer().start()
        url = started.url
    else:
        check_loopback_url(url)
    try:
        deploy(url)
        yield url
    finally:
        if started is not None:
            started.stop()


def _met(ok: bool) -> str:
    return "[green]met[/green]" if ok else "[red]missed[/red]"


def _inner(d: dict[str, float]) -> str:
    total = sum(d.values())
    kinds = " ".join(f"{k.upper()}×{v:g}" if v != 1 else k.upper() for k, v in d.items())
    return f"{total:g}: {kinds}" if d else "0"


def table(rows: list[dict[str, Any]]) -> Table:
    t = Table(title="Server cost per call (medians over the rounds)")
    for col, just in (
        ("function", "left"),
        ("server µs", "right"),
        ("no-op µs", "right"),
        ("ratio", "right"),
        ("target", "right"),
        ("", "left"),
        ("inner commands per call", "left"),
        ("alone in MULTI µs", "right"),
        ("Lua overhead µs", "right"),
        ("calls/s vs no-op", "right"),
        (" ", "left"),
    ):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rows:
        t.add_row(
            escape(r["label"]),
            f"{r['server_us']:.1f}",
            f"{r['noop_server_us']:.1f}",
            f"{r['ratio']:.1f}×",
            f"≤ {r['target']:g}×",
            _met(r["met"]),
            _inner(r["inner_commands"]),
            f"{r['raw_us']:.1f}",
            f"{r['lua_overhead_us']:.1f}",
            "n/a" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.2f}×",
            "" if r["throughput_met"] is None else _met(r["throughput_met"]),
        )
    return t


def decide_table(d: dict[str, Any]) -> Table:
    t = Table(title="The ad decision (cache.decide.decide), per decision")
    for col in (
        "function calls",
        "server µs",
        "no-op µs",
        "ratio",
        "target",
        "",
        "rounds",
        "inner commands",
        "served",
    ):
        t.add_column(col, justify="right")
    t.add_row(
        f"{d['function_calls_per_decision']:.1f}",
        f"{d['server_us']:.0f}",
        f"{d['noop_server_us']:.1f}",
        f"{d['ratio']:.0f}×",
        f"≤ {d['target']:g}×",
        _met(d["met"]),
        f"{d['rounds_per_decision']:.2f} (≤ {d['max_rounds']})",
        f"{sum(d['inner_commands'].values()):.0f}",
        f"{d['served']:.0%}",
    )
    return t


def sizing_tables(decide: dict[str, Any] | None, ceil: list[dict[str, Any]]) -> list[Table]:
    out = []
    if decide is not None:
        t = Table(
            title=f"Redis cores (primaries) at 60 % CPU, {decide['server_us']:.0f} µs/decision"
        )
        t.add_column("decisions/s", justify="right")
        t.add_column("cores", justify="right")
        for row in cost_sizing.cores_table(decide["server_us"]):
            t.add_row(f"{row['decisions_per_s']:,}", f"{row['cores']:,.1f}")
        out.append(t)
    t = Table(title="Ceiling per core: redis-benchmark -P 16 -c 4 of the real call")
    for col in ("call", "calls/s per core", "1e6 / server µs", "command"):
        t.add_column(col)
    for row in ceil:
        ops = row.get("ops_per_s")
        bound = row.get("server_bound_ops_per_s")
        t.add_row(
            row["label"],
            f"{ops:,}" if ops else "n/a",
            f"{bound:,}" if bound else "",
            escape(row.get("command", row.get("note", ""))),
        )
    out.append(t)
    return out


@dataclass
class Target:
    """One server the hot calls run on (this library, or a baseline's) and what it ran."""

    url: str
    r: redis.Redis
    world: World
    functions: frozenset[str]
    captured: dict[str, list[cost_measure.Command]] = field(default_factory=dict)
    acc: dict[str, cost_measure.Rounds] = field(default_factory=dict)


def _functions(source: str) -> frozenset[str]:
    """The functions a rendered library registers."""
    return frozenset(re.findall(r"register_function\{function_name='(\w+)'", source))


def measure_hot(targets: list[Target], calls: int, rounds: int) -> list[list[dict[str, Any]]]:
    """Every hot call on every target, the targets interleaved within each round."""
    nxt = dict.fromkeys((h.name for h in HOT_CALLS), 0)
    for t in targets:
        warm = max(WARMUP, t.world.entities)
        for hc in HOT_CALLS:  # a first call on every entity (first writes do more), the capture
            if hc.function not in t.functions:
                continue
            cost_measure.hot_round(t.r, t.world, hc, 0, warm, ())
            t.captured[hc.name] = cost_measure.capture(t.url, t.r, t.world, hc)
            t.acc[hc.name] = cost_measure.Rounds()
    warm = max(WARMUP, targets[0].world.entities)
    nxt = dict.fromkeys((h.name for h in HOT_CALLS), warm)
    for _ in range(rounds):
        for hc in HOT_CALLS:
            for t in targets:
                if hc.name in t.acc:
                    fn, noop, raw = cost_measure.hot_round(
                        t.r, t.world, hc, nxt[hc.name], calls, t.captured[hc.name]
                    )
                    t.acc[hc.name].add(fn, noop, raw)
            nxt[hc.name] += calls
    return [
        [cost_measure.summarise(hc, t.acc[hc.name], t.captured[hc.name]) for hc in HOT_CALLS
         if hc.name in t.acc]
        for t in targets
    ]  # fmt: skip


def compare_table(ours: list[dict[str, Any]], base: list[dict[str, Any]]) -> Table:
    t = Table(title="Before and after, same rounds (server µs per call, × the no-op beside it)")
    for col in ("function", "baseline µs", "×", "ours µs", "×", "ours / baseline"):
        t.add_column(col, justify="left" if col == "function" else "right")
    before = {b["name"]: b for b in base}
    for r in ours:
        b = before.get(r["name"])
        if b is None:
            t.add_row(
                escape(r["label"]), "n/a", "", f"{r['server_us']:.1f}", f"{r['ratio']:.1f}×", ""
            )
            continue
        t.add_row(
            escape(r["label"]),
            f"{b['server_us']:.1f}",
            f"{b['ratio']:.1f}×",
            f"{r['server_us']:.1f}",
            f"{r['ratio']:.1f}×",
            f"{r['server_us'] / b['server_us']:.2f}",
        )
    return t


def _meta(
    url: str, r: redis.Redis, argv: list[str], started: float, load0: float
) -> dict[str, Any]:
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "redis": str(r.info("server")["redis_version"]),
        "command": " ".join(["python -m benchmarks.cost", *argv]),
        "duration_s": round(time.time() - started),
        "load_average_before_after": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


@click.command()
@click.option("--quick", is_flag=True, help="300 calls per block instead of 2,000.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the JSON here.")
@click.option("--url", default=None, help="A loopback Redis to use (default: start one).")
@click.option("--calls", type=int, default=None, help="Calls per block (overrides --quick).")
@click.option("--rounds", type=int, default=None, help="Interleaved rounds (default 3).")
@click.option("--sizing", is_flag=True, help="Also the cores table and redis-benchmark ceilings.")
@click.option("--no-decide", is_flag=True, help="Skip the ad decision.")
@click.option(
    "--baseline-lib",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An earlier rendered library to measure side by side (before and after in one run).",
)
@click.option(
    "--write-budget",
    is_flag=True,
    help=f"Rewrite {cost_budget.PATH.name} from the library as it is (nothing else runs).",
)
def main(
    quick: bool,
    json_path: Path | None,
    url: str | None,
    calls: int | None,
    rounds: int | None,
    sizing: bool,
    no_decide: bool,
    baseline_lib: Path | None,
    write_budget: bool,
) -> None:  # fmt: skip
    # wide enough for the table when the output is a file or a pipe
    console = Console(width=None if sys.stdout.isatty() else 200, emoji=False, highlight=False)
    plan = dict(QUICK if quick else FULL)
    if calls:
        plan["calls"] = calls
    if rounds:
        plan["rounds"] = rounds
    started, load0 = time.time(), os.getloadavg()[0]
    with server(url) as target:
        if write_budget:
            budget = cost_budget.measure(target)
            cost_budget.write(budget)
            for name, b in budget.items():
                console.print(f"{name:22} {b['function']:20} {_inner(b['commands'])}")
            console.print(f"wrote {cost_budget.PATH}")
            return
        r = redis.Redis.from_url(target)
        ac = AdCache(redis.Redis.from_url(target))
        world = World(r, uuid.uuid4().hex[:6], entities=100)
        seed(ac, world)
        ac.close()
        targets = [Target(target, r, world, _functions(render().source))]
        stack = contextlib.ExitStack()
        if baseline_lib is not None:
            burl = stack.enter_context(server(None))
            br = redis.Redis.from_url(burl)
            bac = AdCache(redis.Redis.from_url(burl))
            bworld = World(br, world.tag, entities=world.entities)
            seed(bac, bworld)  # seeded by this client and library, then the baseline's code
            bac.close()
            source = baseline_lib.read_text()
            br.execute_command("FUNCTION", "LOAD", "REPLACE", source)
            targets.append(Target(burl, br, bworld, _functions(source)))
        console.rule(f"hot calls: {plan['calls']} calls × {plan['rounds']} rounds")
        with stack:
            measured = measure_hot(targets, plan["calls"], plan["rounds"])
        rows = measured[0]
        base_rows = measured[1] if baseline_lib is not None else None
        console.print(table(rows))
        if base_rows is not None:
            console.print(compare_table(rows, base_rows))
        decide = None
        if not no_decide:
            console.rule(f"decide: {plan['decisions']} decisions × {plan['rounds']} rounds")
            decide = cost_measure.measure_decide(
                target, r, rounds=plan["rounds"], n=plan["decisions"]
            )
            console.print(decide_table(decide))
        sized: dict[str, Any] | None = None
        if sizing:
            console.rule("sizing")
            ceil = cost_sizing.ceilings(target, world, rows, requests=plan["bench_requests"])
            sized = {
                "cores": cost_sizing.cores_table(decide["server_us"]) if decide else [],
                "ceilings": ceil,
                "utilisation": cost_sizing.UTILISATION,
            }
            for t in sizing_tables(decide, ceil):
                console.print(t)
        meta = _meta(target, r, sys.argv[1:], started, load0)
        meta.update(plan)
        r.close()
    missed = [x["label"] for x in rows if not x["met"]]
    if decide is not None and not decide["met"]:
        missed.append("decide")
    console.print(f"server-time targets missed: {', '.join(missed) or 'none'}")
    if json_path is not None:
        doc: dict[str, Any] = {"meta": meta, "functions": rows, "decide": decide, "sizing": sized}
        if base_rows is not None:
            doc["baseline"] = {"library": str(baseline_lib), "functions": base_rows}
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(doc, indent=2) + "\n")
        console.print(f"wrote {json_path}")


if __name__ == "__main__":
    main()
