"""Time-zone arguments. The library knows by name the zones of its table (`LIBRARY_ZONES`: those
with daylight saving or a 30/45-minute offset); any other IANA name is sent as its POSIX TZ rule,
the footer of its TZif file in the local tz database (the system's, or the `tzdata` package), so
every name `zoneinfo` knows works from Python. See docs/timezones.md.
"""

from __future__ import annotations

import io
import re
import struct
import time
import zoneinfo
from datetime import UTC, datetime
from functools import cache

from adcache import _generated

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)*")


def tzif_from_rule(rule: str) -> bytes:
    """A TZif (version 2) file with no listed transitions and `rule` as its footer: what
    `zoneinfo.ZoneInfo.from_file` needs to apply a POSIX TZ rule at every instant."""
    v1 = b"TZif2" + bytes(15) + struct.pack(">6l", 0, 0, 0, 0, 1, 1) + struct.pack(">lBB", 0, 0, 0)
    v1 += b"\0"
    return v1 + v1 + b"\n" + rule.encode() + b"\n"


def rule_zone(rule: str) -> zoneinfo.ZoneInfo:
    """A ZoneInfo that applies the POSIX TZ `rule` at every instant."""
    return zoneinfo.ZoneInfo.from_file(io.BytesIO(tzif_from_rule(rule)), key=rule)


def _footer(name: str) -> str:
    """The POSIX TZ footer of a zone's TZif file ('' when there is none)."""
    for root in zoneinfo.TZPATH:
        try:
            with open(f"{root}/{name}", "rb") as f:
                data = f.read()
            break
        except OSError:
            continue
    else:
        try:
            import importlib.resources

            data = (
                importlib.resources.files("tzdata.zoneinfo").joinpath(*name.split("/")).read_bytes()
            )
        except (ImportError, OSError, ValueError):
            return ""
    if data[:4] != b"TZif" or data[4:5] < b"2" or not data.endswith(b"\n"):
        return ""
    return data[data.rindex(b"\n", 0, len(data) - 1) + 1 : -1].decode("ascii", "replace")


@cache
def wire(zone: str) -> str:
    """The zone as the library takes it: the name when the library knows it (or when it is no
    name of the local tz database: a POSIX TZ rule goes as it is), else the zone's rule, once it
    is checked to give the zone's offsets over the next three years (a zone whose changes tzdata
    lists one by one, like Morocco's, is sent by name and refused)."""
    if zone in _generated.LIBRARY_ZONES or not _NAME.fullmatch(zone) or ".." in zone:
        return zone
    rule = _footer(zone)
    if not rule:
        return zone
    real, ruled = zoneinfo.ZoneInfo(zone), rule_zone(rule)
    now = int(time.time())
    for t in range(now, now + 3 * 366 * 86400, 5 * 86400):
        at = datetime.fromtimestamp(t, UTC)
        if at.astimezone(real).utcoffset() != at.astimezone(ruled).utcoffset():
            return zone
    return rule
