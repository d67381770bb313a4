"""The IANA time zones the library knows by name: each zone's current rule as a POSIX TZ string
(the footer of its TZif file, e.g. `EST5EDT,M3.2.0,M11.1.0`), from the `tzdata` package. By
default the zones that are more than a whole-hour offset (daylight saving, or 30/45 minutes off);
the Python client sends any other zone as its rule (see adcache.zones).

`lua/zones.txt` is generated from here (`adcache zones`) and committed, so a render does not
depend on the machine's tz database. Each line is a rule, a tab, then the names that follow it. A zone whose footer does not describe its transitions from `SINCE_S` on (Morocco's
Ramadan changes are listed one by one until 2087) is left out: the library would get it wrong.
"""

from __future__ import annotations

import importlib.resources
import struct
import zoneinfo
from collections import defaultdict
from pathlib import Path

SINCE_S = 1767225600  # 2026-01-01T00:00:00Z: rules must hold from here on


def _tzif(data: bytes) -> tuple[list[int], list[int], str]:
    """Transition times, the UTC offset after each (s), and the footer of a TZif v2+ file."""
    if data[:4] != b"TZif" or data[4:5] < b"2":
        raise ValueError("not a TZif v2+ file")
    isut, isstd, leap, timecnt, typecnt, charcnt = struct.unpack(">6l", data[20:44])
    p = 44 + timecnt * 5 + typecnt * 6 + charcnt + leap * 8 + isstd + isut
    isut, isstd, leap, timecnt, typecnt, charcnt = struct.unpack(">6l", data[p + 20 : p + 44])
    p += 44
    times = list(struct.unpack(f">{timecnt}q", data[p : p + 8 * timecnt]))
    p += 8 * timecnt
    idx = data[p : p + timecnt]
    p += timecnt
    offs = [struct.unpack(">l", data[p + 6 * i : p + 6 * i + 4])[0] for i in range(typecnt)]
    footer = data.rstrip(b"\n").rsplit(b"\n", 1)[1].decode()
    return times, [offs[i] for i in idx], footer


def _footer_holds(times: list[int], offsets: list[int], rule: str) -> bool:
    """Whether the rule gives the listed offsets around every listed transition from SINCE_S on
    (from the first such transition: a rule that took effect in 2026 still counts)."""
    from datetime import UTC, datetime

    from adcache.zones import rule_zone  # not at import: render runs before _generated exists

    z = rule_zone(rule)
    first = True
    for i, t in enumerate(times):
        if t < SINCE_S:
            continue
        before = offsets[i - 1] if i and not first else None
        first = False
        for at, want in ((t, offsets[i]), (t - 1, before)):
            if want is None:
                continue
            got = datetime.fromtimestamp(at, UTC).astimezone(z).utcoffset()
            if got is None or int(got.total_seconds()) != want:
                return False
    return True


def zone_rules() -> dict[str, str]:
    """name -> POSIX TZ rule for every zone of the tzdata package whose rule is usable."""
    root = importlib.resources.files("tzdata.zoneinfo")
    out: dict[str, str] = {}
    for name in sorted(zoneinfo.available_timezones()):
        try:
            data = root.joinpath(*name.split("/")).read_bytes()
            times, offsets, rule = _tzif(data)
        except (OSError, ValueError):
            continue
        if rule and " " not in rule and _footer_holds(times, offsets, rule):
            out[name] = rule
    return out


# The zones the library knows by name by default: few, because the library's size limit leaves
# little room (every zone would take about 8 KB). A deployment names its own with `adcache zones
# NAME...`; the Python client sends any zone the library does not know as its rule
# (adcache.zones.wire), so from Python every name works.
DEFAULT_NAMES = [
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Europe/London",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Asia/Kathmandu",
    "Pacific/Chatham",
]


def table_text(names: list[str] | None = None, *, every: bool = False) -> str:
    """lua/zones.txt for the given zones (default: DEFAULT_NAMES; `every`: all of them, about
    8 KB of library, which the 128 KiB limit does not leave room for)."""
    import tzdata  # type: ignore[import-untyped]

    groups: dict[str, list[str]] = defaultdict(list)
    for name, rule in zone_rules().items():
        if every or name in (names or DEFAULT_NAMES):
            groups[rule].append(name)
    lines = [f"# IANA time zones by POSIX TZ rule, tzdata {tzdata.IANA_VERSION} (adcache zones)"]
    for rule in sorted(groups):
        words = groups[rule]
        lines.append(rule + "\t" + " ".join(words))
    return "\n".join(lines) + "\n"


def read_table(path: Path) -> list[tuple[str, str]]:
    """The (rule, compressed names) lines of lua/zones.txt."""
    out: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            rule, _, names = line.partition("\t")
            out.append((rule, names))
    return out


def expand(names: str) -> list[str]:
    """The zone names of one line of lua/zones.txt."""
    return names.split()
