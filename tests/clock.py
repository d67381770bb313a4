"""The test clock: calendar windows are tested by choosing a UTC offset that puts a boundary a
moment away, never by sleeping for hours (see docs/DEVELOPING.md)."""

from __future__ import annotations

import time

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
