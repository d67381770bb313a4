"""`python -m benchmarks.cost_report PATH.json`: the cost ledger's JSON as Markdown tables (the
form `benchmarks/README.md` carries)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks import cost_sizing


def _inner(d: dict[str, float]) -> str:
    if not d:
        return "0"
    kinds = ", ".join(f"{k.upper()} ×{v:g}" if v != 1 else k.upper() for k, v in d.items())
    return f"{sum(d.values()):g}: {kinds}"


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _tput(r: dict[str, Any]) -> str:
    if r["throughput_ratio"] is None:
        return "n/a (setup in each round trip)"
    return f"{r['throughput_ratio']:.2f}×" + ("" if r["throughput_met"] else " (missed)")


def functions(rows: list[dict[str, Any]]) -> str:
    out = [
        "| function | server µs | no-op µs | ratio | target | | inner commands per call "
        "| alone in MULTI µs | Lua overhead µs | calls/s vs no-op (≥ 0.8×) |",
        "|---|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['label']} | {r['server_us']:.1f} | {r['noop_server_us']:.1f} "
            f"| {r['ratio']:.1f}× | ≤ {r['target']:g}× | {_met(r['met'])} "
            f"| {_inner(r['inner_commands'])} | {r['raw_us']:.1f} | {r['lua_overhead_us']:.1f} "
            f"| {_tput(r)} |"
        )
    return "\n".join(out)


def compare(ours: list[dict[str, Any]], base: list[dict[str, Any]]) -> str:
    """Before (a baseline library, `--baseline-lib`) and after, from the same rounds."""
    before = {b["name"]: b for b in base}
    out = [
        "| function | baseline µs | × no-op | ours µs | × no-op | ours / baseline |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in ours:
        b = before.get(r["name"])
        if b is None:
            out.append(f"| {r['label']} | n/a | | {r['server_us']:.1f} | {r['ratio']:.1f}× | |")
            continue
        out.append(
            f"| {r['label']} | {b['server_us']:.1f} | {b['ratio']:.1f}× | {r['server_us']:.1f} "
            f"| {r['ratio']:.1f}× | {r['server_us'] / b['server_us']:.2f} |"
        )
    return "\n".join(out)


def decide(d: dict[str, Any]) -> str:
    return "\n".join(
        [
            "| function calls | server µs | no-op µs | ratio | target | | rounds | inner commands "
            "| served |",
            "|---:|---:|---:|---:|---:|---|---:|---:|---:|",
            f"| {d['function_calls_per_decision']:.1f} | {d['server_us']:.0f} "
            f"| {d['noop_server_us']:.1f} | {d['ratio']:.0f}× | ≤ {d['target']:g}× "
            f"| {_met(d['met'])} | {d['rounds_per_decision']:.2f} (≤ {d['max_rounds']}) "
            f"| {sum(d['inner_commands'].values()):.0f} | {d['served']:.0%} |",
        ]
    )


def cores(d: dict[str, Any]) -> str:
    out = ["| decisions/s | Redis cores (primaries) at 60 % CPU |", "|---:|---:|"]
    for row in cost_sizing.cores_table(d["server_us"]):
        out.append(f"| {row['decisions_per_s']:,} | {row['cores']:,.1f} |")
    return "\n".join(out)


def ceilings(rows: list[dict[str, Any]]) -> str:
    out = [
        "| call | calls/s per core (redis-benchmark -P 16) | 1e6 / server µs |",
        "|---|---:|---:|",
    ]
    for r in rows:
        ops = r.get("ops_per_s")
        bound = r.get("server_bound_ops_per_s")
        out.append(
            f"| {r['label']} | {f'{ops:,}' if ops else 'n/a (needs a setup per call)'} "
            f"| {f'{bound:,}' if bound else ''} |"
        )
    return "\n".join(out)


def markdown(doc: dict[str, Any]) -> str:
    m = doc["meta"]
    parts = [
        f"Run {m['when']}: `{m['command']}`, Redis {m['redis']}, {m['machine']}; "
        f"{m['calls']} calls per block × {m['rounds']} rounds; load average "
        f"{m['load_average_before_after'][0]} before, {m['load_average_before_after'][1]} after.",
        functions(doc["functions"]),
    ]
    if doc.get("baseline"):
        parts.append(compare(doc["functions"], doc["baseline"]["functions"]))
    if doc.get("decide"):
        parts.append(decide(doc["decide"]))
    if doc.get("sizing"):
        if doc.get("decide"):
            parts.append(cores(doc["decide"]))
        parts.append(ceilings(doc["sizing"]["ceilings"]))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown(json.loads(Path(sys.argv[1]).read_text())))
