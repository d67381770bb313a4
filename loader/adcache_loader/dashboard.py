"""What `adcache top`, `adcache stats` and `adcache audit` print: rich renderables built from the
monitor and stats facades (no I/O beyond those calls)."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from adcache import AdCache
from adcache.monitor import AuditReport, Counters, Health
from adcache.stats import Series, Summary


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def pct(v: float | Decimal | None) -> str:
    return "–" if v is None else f"{float(v) * 100:.2f} %"


def money(v: Decimal | None, places: int = 4) -> str:
    return "–" if v is None else f"{v:.{places}f}"


def ratio(v: Decimal | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def health_view(h: Health) -> RenderableType:
    mem, maxm = h.total("used_memory"), h.total("maxmemory")
    head = Text.assemble(
        ("nodes up ", "bold"),
        f"{h.nodes_up}/{len(h.nodes)}   ",
        ("hit rate ", "bold"),
        f"{pct(h.hit_rate)}   ",
        ("memory ", "bold"),
        f"{human_bytes(mem)}" + (f" / {human_bytes(maxm)}" if maxm else " (no maxmemory)") + "   ",
        ("ops/s ", "bold"),
        f"{h.total('ops_per_sec'):,}   ",
        ("clients ", "bold"),
        f"{h.total('connected_clients'):,}   ",
        ("evicted ", "bold"),
        f"{h.total('evicted_keys'):,}   ",
        ("expired ", "bold"),
        f"{h.total('expired_keys'):,}",
    )
    t = Table(title="nodes", expand=False)
    for col in (
        "node",
        "role",
        "up",
        "hit rate",
        "memory",
        "max",
        "ops/s",
        "clients",
        "evicted",
        "expired",
        "fcall",
        "fcall_ro",
        "µs/fcall",
    ):
        t.add_column(col, justify="right" if col not in ("node", "role") else "left")
    for n in h.nodes:
        if not n.up:
            t.add_row(n.node, n.role, "[red]down[/]", *[""] * 9, n.error or "")
            continue
        fc, fro = n.functions.get("fcall"), n.functions.get("fcall_ro")
        calls = (fc.calls if fc else 0) + (fro.calls if fro else 0)
        usec = (fc.usec if fc else 0) + (fro.usec if fro else 0)
        t.add_row(
            n.node,
            n.role,
            "[green]up[/]",
            pct(n.hit_rate),
            human_bytes(n.used_memory),
            human_bytes(n.maxmemory) if n.maxmemory else "–",
            f"{n.ops_per_sec:,}",
            f"{n.connected_clients:,}",
            f"{n.evicted_keys:,}",
            f"{n.expired_keys:,}",
            f"{fc.calls if fc else 0:,}",
            f"{fro.calls if fro else 0:,}",
            f"{usec / calls:.1f}" if calls else "–",
        )
    return Group(head, t)


def counters_view(c: Counters) -> RenderableType:
    t = Table(title="adcache counters (summed over nodes)")
    t.add_column("counter")
    t.add_column("total", justify="right")
    totals = c.totals
    for name, value in totals.items():
        t.add_row(name, f"{value:,}")
    if not totals:
        t.add_row("(none counted since the library was loaded)", "")
    for node, err in c.errors.items():
        t.add_row(f"[red]{node}[/]", err)
    return t


def summary_view(summaries: Sequence[Summary]) -> Table:
    t = Table(title="campaigns")
    for col in (
        "campaign",
        "range",
        "impr.",
        "clicks",
        "conv.",
        "cost",
        "revenue",
        "reach",
        "CTR",
        "CVR",
        "CPC",
        "CPM",
        "ROAS",
    ):
        t.add_column(col, justify="left" if col in ("campaign", "range") else "right")
    for s in summaries:
        t.add_row(
            s.campaign_id,
            f"{s.first}..{s.last} ({s.buckets} {s.unit}s)",
            f"{s.impressions:,}",
            f"{s.clicks:,}",
            f"{s.conversions:,}",
            money(s.cost),
            money(s.revenue),
            f"≈{s.reach:,}",
            pct(s.ctr),
            pct(s.cvr),
            money(s.cpc),
            money(s.cpm),
            ratio(s.roas),
        )
    return t


def series_view(series: Series) -> Table:
    t = Table(title=f"{series.campaign_id} per {series.unit}")
    for col in ("bucket", "impr.", "clicks", "conv.", "cost", "revenue", "reach", "CTR"):
        t.add_column(col, justify="left" if col == "bucket" else "right")
    for p in series.points:
        t.add_row(
            p.label,
            f"{p.impressions:,}",
            f"{p.clicks:,}",
            f"{p.conversions:,}",
            money(p.cost),
            money(p.revenue),
            f"≈{p.reach:,}",
            pct(p.ctr),
        )
    return t


def top_view(cache: AdCache, campaigns: Sequence[str] = (), days: int = 1) -> RenderableType:
    parts: list[RenderableType] = [
        health_view(cache.monitor.health()),
        counters_view(cache.monitor.counters()),
    ]
    if campaigns:
        parts.append(summary_view(cache.stats.summaries(list(campaigns), days=days)))
    return Group(*parts)


def audit_view(r: AuditReport) -> RenderableType:
    state = "[green]ok[/]" if r.ok else "[red]problems found[/]"
    head = Text.from_markup(
        f"scanned {r.scanned:,} adcache keys ({'complete' if r.complete else 'sampled: max-keys reached'}): {state}"
    )
    t = Table(title="keys per pattern")
    t.add_column("pattern")
    t.add_column("keys", justify="right")
    for name, n in r.by_pattern.items():
        t.add_row(name, f"{n:,}")
    parts: list[RenderableType] = [head, t]
    for title, items in (
        ("without a TTL", r.no_ttl),
        ("unknown pattern", r.unknown),
        ("wrong type", r.wrong_type),
    ):
        if items:
            lt = Table(title=f"{title} (first {len(items)})")
            lt.add_column("key")
            for k in items:
                lt.add_row(k)
            parts.append(lt)
    if r.owned_without_ttl:
        parts.append(Text(f"{r.owned_without_ttl:,} keys without TTL have an owner by design"))
    return Group(*parts)
