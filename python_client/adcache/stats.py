"""Campaign performance in real time (Lua domain `stats`).

Events are counted server-side into hourly and daily buckets of the campaign, named by the server's
clock in a configured UTC offset; unique reach is a HyperLogLog per bucket; an event id makes a
retried delivery count nothing. A summary over the last N days or hours is one call, and so is a
series for a dashboard. Derived metrics (CTR, CVR, CPC, CPM, ROAS) are computed here, in `Decimal`,
and are `None` when their denominator is zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

from adcache import _generated as keys
from adcache import zones
from adcache._core import Call, ints, pairs, text
from adcache._facade import Facade, M, Plan, call, many, one, plan
from adcache.money import from_micros

if TYPE_CHECKING:
    from adcache.client import AdCache

Unit = Literal["hour", "day"]

MAX_EVENTS_PER_CALL = 1000
MAX_DAYS = 90
MAX_HOURS = 168
HOUR_S = 3600
DAY_S = 86400


@dataclass(frozen=True, slots=True)
class StatsConfig:
    """How buckets are named and kept. Use one configuration for the whole deployment: the offset
    names the buckets, so readers must use the offset the writers used.

    offset_s: the stats time zone, seconds east of UTC (fixed: no daylight-saving changes).
    zone: the stats time zone by name, e.g. "America/New_York" (or a POSIX TZ rule), instead of
    offset_s: days follow its local midnight (23 or 25 hours across a daylight-saving change),
    and an hour bucket is labelled with its UTC offset (YYYYMMDDHH+hhmm), so a repeated hour is
    a bucket of its own. See docs/stats.md.
    hour_retention_s / day_retention_s: how long a bucket lives after its hour / day has ended.
    dedup_s: how long an event id is remembered (0: no de-duplication).
    """

    offset_s: int = 0
    hour_retention_s: int = 48 * HOUR_S
    day_retention_s: int = 90 * DAY_S
    dedup_s: int = HOUR_S
    zone: str = ""

    @property
    def tz(self) -> str | int:
        """The zone as the library takes it (adcache.zones.wire), or the offset."""
        return zones.wire(self.zone) if self.zone else self.offset_s


DEFAULT_CONFIG = StatsConfig()


@dataclass(frozen=True, slots=True)
class Event:
    """One delivery to count. Money in integer micros (see `adcache.money.to_micros`).

    user_id adds to unique reach; event_id makes a retried delivery of the same event count nothing
    (within `StatsConfig.dedup_s`).
    """

    impressions: int = 0
    clicks: int = 0
    conversions: int = 0
    cost_micros: int = 0
    revenue_micros: int = 0
    user_id: str | None = None
    event_id: str | None = None

    def args(self) -> list[str | int]:
        return [
            self.impressions,
            self.clicks,
            self.conversions,
            self.cost_micros,
            self.revenue_micros,
            self.user_id or "",
            self.event_id or "",
        ]


@dataclass(frozen=True, slots=True)
class Recorded:
    """What a record call counted: events counted, duplicates dropped, and the bucket labels."""

    recorded: int
    duplicates: int
    hour: str
    day: str


def _ratio(num: Decimal | int, den: Decimal | int) -> Decimal | None:
    # Safe division: no denominator, no metric (rather than a misleading 0 or an exception).
    if den == 0:
        return None
    return Decimal(num) / Decimal(den)


class _Derived:
    """CTR, CVR, CPC, CPM and ROAS from the integer totals, exact to 28 significant digits."""

    __slots__ = ()
    impressions: int
    clicks: int
    conversions: int
    cost_micros: int
    revenue_micros: int

    @property
    def cost(self) -> Decimal:
        return from_micros(self.cost_micros)

    @property
    def revenue(self) -> Decimal:
        return from_micros(self.revenue_micros)

    @property
    def ctr(self) -> Decimal | None:
        """Clicks per impression."""
        return _ratio(self.clicks, self.impressions)

    @property
    def cvr(self) -> Decimal | None:
        """Conversions per click."""
        return _ratio(self.conversions, self.clicks)

    @property
    def cpc(self) -> Decimal | None:
        """Cost per click, in currency units."""
        return _ratio(self.cost, self.clicks)

    @property
    def cpm(self) -> Decimal | None:
        """Cost per thousand impressions, in currency units."""
        return _ratio(self.cost * 1000, self.impressions)

    @property
    def roas(self) -> Decimal | None:
        """Revenue per unit of cost."""
        return _ratio(self.revenue_micros, self.cost_micros)


@dataclass(frozen=True, slots=True)
class Summary(_Derived):
    """Totals over `buckets` hours or days, from bucket `first` to `last` (labels, oldest first).

    reach is the HyperLogLog estimate of distinct users over the whole range (standard error
    0.81 %). last_ms is the server time of the campaign's last record (0 when none); now_ms the
    server time of the summary.
    """

    campaign_id: str
    unit: str
    first: str
    last: str
    buckets: int
    impressions: int
    clicks: int
    conversions: int
    cost_micros: int
    revenue_micros: int
    reach: int
    last_ms: int
    now_ms: int


# Summary's fields from `buckets` on: integers, named as in the reply.
_SUMMARY_INTS = tuple(f.name for f in fields(Summary))[4:]


@dataclass(frozen=True, slots=True)
class Point(_Derived):
    """One bucket of a series: its label (YYYYMMDDHH or YYYYMMDD), totals and reach estimate."""

    label: str
    impressions: int
    clicks: int
    conversions: int
    cost_micros: int
    revenue_micros: int
    reach: int


@dataclass(frozen=True, slots=True)
class Series:
    campaign_id: str
    unit: str
    points: tuple[Point, ...] = field(default_factory=tuple)


# ---- call builders ----


def _range(unit: str, n: int) -> None:
    if unit not in ("hour", "day"):
        raise ValueError("unit must be 'hour' or 'day'")
    top = MAX_HOURS if unit == "hour" else MAX_DAYS
    if not 1 <= n <= top:
        raise ValueError(f"n must be between 1 and {top} {unit}s")


def record_call(
    campaign_id: str, events: Sequence[Event], config: StatsConfig = DEFAULT_CONFIG
) -> Call[Recorded]:
    """One call counting up to 1000 events in the campaign's current hour and day."""
    args: list[str | int] = [
        config.tz,
        config.hour_retention_s,
        config.day_retention_s,
        config.dedup_s,
    ]
    for e in events:
        args += e.args()

    def parse(r: Any) -> Recorded:
        return Recorded(int(r[0]), int(r[1]), text(r[2]), text(r[3]))

    # Safe to send again (through a failover) only when every event carries its id.
    retry = config.dedup_s > 0 and all(e.event_id for e in events)
    return Call("ac_stats_record", (keys.stats_meta(campaign_id),), tuple(args), parse, retry)


def summary_call(
    campaign_id: str,
    unit: Unit = "day",
    n: int = 7,
    config: StatsConfig = DEFAULT_CONFIG,
    *,
    reach: bool = True,
) -> Call[Summary]:
    """Totals and reach of the last n hours or days, the current (partial) one included.
    reach=False skips the HyperLogLog count (most of the call's cost); `reach` is then -1."""
    _range(unit, n)

    def parse(r: Any) -> Summary:
        f = pairs(r)
        labels = (text(f["unit"]), text(f["from"]), text(f["to"]))
        return Summary(campaign_id, *labels, *(int(f[k]) for k in _SUMMARY_INTS))

    args = (unit, n, config.tz, 1 if reach else 0)
    return Call("ac_stats_summary", (keys.stats_meta(campaign_id),), args, parse)


def series_call(
    campaign_id: str, unit: Unit = "hour", n: int = 24, config: StatsConfig = DEFAULT_CONFIG
) -> Call[Series]:
    """Per-bucket values of the last n hours or days, oldest first."""
    _range(unit, n)

    def parse(r: Any) -> Series:
        pts = (Point(text(r[i]), *ints(r[i + 1 : i + 7])) for i in range(0, len(r), 7))
        return Series(campaign_id, unit, tuple(pts))

    return Call("ac_stats_series", (keys.stats_meta(campaign_id),), (unit, n, config.tz), parse)


def _chunks(campaign_id: str, events: Sequence[Event], config: StatsConfig) -> list[Call[Recorded]]:
    step = MAX_EVENTS_PER_CALL
    return [
        record_call(campaign_id, events[i : i + step], config)
        for i in range(0, max(len(events), 1), step)
    ]


def _merge(parts: list[Recorded]) -> Recorded:
    return Recorded(
        sum(p.recorded for p in parts),
        sum(p.duplicates for p in parts),
        parts[-1].hour,
        parts[-1].day,
    )


def _unit_n(days: int | None, hours: int | None) -> tuple[Unit, int]:
    if (days is None) == (hours is None):
        raise ValueError("give exactly one of days= or hours=")
    return ("day", days) if days is not None else ("hour", hours)  # type: ignore[return-value]


class Stats(Facade[M]):
    """Campaign stats on the sync or asyncio `AdCache` (`cache.stats`).

    `config` (a `StatsConfig`) applies to every call of this facade; set it once at start-up.
    """

    def __init__(self, cache: AdCache, config: StatsConfig | None = None) -> None:
        self._c = cache
        self.config = config or StatsConfig()

    @plan
    def record(self, campaign_id: str, events: Sequence[Event]) -> Plan[Recorded]:
        """Count events; more than 1000 go as several calls in one pipeline."""
        return _merge((yield from many(_chunks(campaign_id, events, self.config))))

    @plan
    def summary(
        self,
        campaign_id: str,
        *,
        days: int | None = None,
        hours: int | None = None,
        reach: bool = True,
    ) -> Plan[Summary]:
        """Totals, reach and derived metrics of the last `days` days or `hours` hours
        (reach=False: skip the unique-reach count, the costly part; reach is then -1)."""
        unit, n = _unit_n(days, hours)
        return (yield from one(summary_call(campaign_id, unit, n, self.config, reach=reach)))

    @plan
    def summaries(
        self, campaign_ids: Sequence[str], *, days: int | None = None, hours: int | None = None
    ) -> Plan[list[Summary]]:
        """Summaries of many campaigns, one pipelined round per node."""
        unit, n = _unit_n(days, hours)
        return (yield from many([summary_call(c, unit, n, self.config) for c in campaign_ids]))

    @call
    def series(self, campaign_id: str, unit: Unit = "hour", n: int = 24) -> Call[Series]:
        return series_call(campaign_id, unit, n, self.config)


AsyncStats = Stats  # the same class: on an asyncio client its methods return awaitables
