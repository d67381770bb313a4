"""`python -m benchmarks [--only NAME] [--url URL] [--cluster-url URL]`

Runs every `benchmarks/bench_*.py` module's `run(env)` against throwaway servers (or the given
ones), prints a table and writes `benchmarks/results/latest.json` and `latest.md`.
"""

from __future__ import annotations

import importlib
import json
import platform
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from benchmarks.env import bench_env
from benchmarks.harness import Result

HERE = Path(__file__).parent


def _modules(only: tuple[str, ...]) -> list[str]:
    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if only:
        names = [n for n in names if n.removeprefix("bench_") in only or n in only]
    return names


def markdown(results: list[Result]) -> str:
    lines = [
        "| group | case | ops/s | p50 µs | p99 µs | round trips/op | note |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        rt = "" if r.round_trips_per_op is None else f"{r.round_trips_per_op:.2f}"
        lines.append(
            f"| {r.group} | {r.case} | {r.ops_per_s:,.0f} | {r.p50_us:,.0f} | {r.p99_us:,.0f} | {rt} | {r.note} |"
        )
    return "\n".join(lines)


@click.command()
@click.option("--only", multiple=True, help="Run only these modules (e.g. --only core).")
@click.option("--url", default=None, help="Standalone Redis to use (default: start one).")
@click.option(
    "--cluster-url", default=None, help="Cluster seed to use (default: start 3 primaries)."
)
@click.option("--out", type=click.Path(path_type=Path), default=HERE / "results")
def main(only: tuple[str, ...], url: str | None, cluster_url: str | None, out: Path) -> None:
    console = Console()
    results: list[Result] = []
    with bench_env(url, cluster_url) as env:
        for name in _modules(only):
            console.rule(name)
            mod = importlib.import_module(f"benchmarks.{name}")
            rows: list[Result] = mod.run(env)
            results.extend(rows)
            table = Table()
            for col in ("group", "case", "ops/s", "p50 µs", "p99 µs", "rt/op", "note"):
                table.add_column(col)
            for r in rows:
                rt = "" if r.round_trips_per_op is None else f"{r.round_trips_per_op:.2f}"
                table.add_row(
                    r.group,
                    r.case,
                    f"{r.ops_per_s:,.0f}",
                    f"{r.p50_us:,.0f}",
                    f"{r.p99_us:,.0f}",
                    rt,
                    r.note,
                )
            console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, python {platform.python_version()}",
    }
    (out / "latest.json").write_text(
        json.dumps({"meta": meta, "results": [r.as_dict() for r in results]}, indent=2)
    )
    (out / "latest.md").write_text(
        f"Run {meta['when']} on {meta['machine']}\n\n" + markdown(results) + "\n"
    )
    console.print(f"wrote {out / 'latest.json'} and {out / 'latest.md'}")


if __name__ == "__main__":
    main()
