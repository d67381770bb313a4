"""The test clock: calendar windows are tested by choosing a UTC offset that puts a boundary a
moment away, never by sleeping for hours (see docs/DEVELOPING.md)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from adcache import AdCache


def server_ms(ac: AdCache) -> int:
    """The server's clock (what the library uses), in milliseconds."""
    s, us = ac.redis.time()  # type: ignore[misc]
    return int(s) * 1000 + int(us) // 1000


def boundary_offset(now_ms: int, period_s: int, ahead_s: int = 2) -> int:
    """A UTC offset (s) that puts the end of the current `period_s` period (60 for minutes, 3600
    for hours, 86400 for days) about `ahead_s` seconds after now_ms."""
    end_s = now_ms // 1000 + ahead_s
    off = (-end_s) % period_s
    return off - period_s if off > period_s // 2 else off


def sleep_until(ac: AdCache, at_ms: int, margin_ms: int = 60) -> None:
    """Sleep until the server clock has passed at_ms (plus a margin)."""
    while (left := at_ms + margin_ms - server_ms(ac)) > 0:
        time.sleep(left / 1000)


def period_bounds(now_ms: int, unit: str, offset_s: int = 0) -> tuple[int, int]:
    """Start and end (ms) of the calendar period holding now_ms in a zone offset_s east of UTC,
    as the library computes them (weeks start on Monday, months on the 1st)."""
    tz = timezone(timedelta(seconds=offset_s))
    t = datetime.fromtimestamp(now_ms / 1000, tz)
    if unit == "minute":
        start = t.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif unit == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif unit in ("day", "week"):
        start = t.replace(hour=0, minute=0, second=0, microsecond=0)
        if unit == "week":
            start -= timedelta(days=start.weekday())
        end = start + timedelta(days=1 if unit == "day" else 7)
    elif unit == "month":
        start = t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (start + timedelta(days=32)).replace(day=1)
    else:
        raise ValueError(unit)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


def offset_away(now_ms: int, unit: str, margin_s: int = 7200) -> int:
    """A UTC offset (s) that keeps both ends of the current `unit` period at least margin_s away
    from now_ms, so a test of that window cannot meet a boundary (or another window's boundary
    that coincides with it: the last hour of a day, week, month or year) whatever the hour."""
    for off in (0, -43200, 43200, -21600, 21600):
        start, end = period_bounds(now_ms, unit, off)
        if now_ms - start >= margin_s * 1000 and end - now_ms >= margin_s * 1000:
            return off
    raise AssertionError(f"no offset keeps a {unit} boundary {margin_s} s away")


CALM_MARGIN_S = {"minute": 10, "hour": 600, "day": 7200, "week": 7200, "month": 7200}


def calm_offset(now_ms: int, units: tuple[str, ...] = tuple(CALM_MARGIN_S)) -> int:
    """A UTC offset (s) that keeps now away from every boundary of the given calendar units (10 s
    from a minute's, 10 min from an hour's, 2 h from a day's, week's or month's), so a test that
    counts in those windows over a few calls meets none of them, whatever the time it runs at."""
    for base in (0, -43200, 43200, -21600, 21600):
        for shift in (0, 1800, -1800, 30, 1830, -1770):
            off = base + shift
            if all(
                now_ms - (b := period_bounds(now_ms, u, off))[0] >= CALM_MARGIN_S[u] * 1000
                and b[1] - now_ms >= CALM_MARGIN_S[u] * 1000
                for u in units
            ):
                return off
    raise AssertionError("no offset keeps every calendar boundary away")
