"""Server cost of a named time zone against a fixed offset, side by side in one run.

    python -m benchmarks.tz [--calls 2000] [--rounds 3] [--url redis://127.0.0.1:6379]

Starts its own throwaway server unless given --url (the library is deployed there; --library FILE
deploys another rendered library, e.g. the one before zones, and runs the offset rows only). For each case
it runs the same call with an offset and with a zone, interleaved round by round (every other
round backwards), and reads the
server's µs per call from INFO commandstats (fcall + fcall_ro), next to the no-op ac_version.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adcache import AdCache
from adcache.campaigns import CampaignSpec, Targeting
from adcache.caps import Candidate, CapRule
from adcache.stats import Event, StatsConfig

ZONE = "America/New_York"
OFFSET = -5 * 3600


def _fcall_stats(ac: AdCache) -> tuple[int, int]:
    info: dict[str, Any] = ac.redis.info("commandstats")  # type: ignore[assignment]
    calls = usec = 0
    for name in ("cmdstat_fcall", "cmdstat_fcall_ro"):
        if name in info:
            calls += int(info[name]["calls"])
            usec += int(info[name]["usec"])
    return calls, usec


def cases(ac: AdCache, zones: bool = True) -> dict[str, Callable[[int], object]]:
    run = uuid.uuid4().hex[:8]

    def caps(tz: str | int) -> tuple[Candidate, str]:
        kw: dict[str, Any] = {"zone": tz} if isinstance(tz, str) else {"offset_s": tz}
        rules = tuple(CapRule.fixed("campaign", u, 10**6, **kw) for u in ("hour", "day", "week"))  # type: ignore[arg-type]
        return Candidate(f"c-{run}", rules), f"u-{run}-{tz}"

    def campaign(tz: str | int) -> str:
        cid = f"b-{run}-{tz}"
        now = int(time.time() * 1000)
        kw: dict[str, Any] = {"day_zone": tz} if isinstance(tz, str) else {"day_offset_s": tz}
        ac.campaigns.create(
            cid,
            CampaignSpec(
                advertiser_id="adv",
                bid_cpm_micros=1_000_000,
                budget_micros=10**14,
                daily_budget_micros=10**13,
                start_ms=now - 60_000,
                end_ms=now + 86_400_000,
                targeting=Targeting.of(["i"], ["g"], ["mobile"]),
                **kw,
            ),
        )
        return cid

    out: dict[str, Callable[[int], object]] = {
        "ac_version (no-op)": lambda i: ac.redis.fcall_ro("ac_version", 0)  # type: ignore[no-untyped-call]
    }
    for label, tz in (("offset", OFFSET), ("zone", ZONE))[: 2 if zones else 1]:
        cand, user = caps(tz)
        cid = campaign(tz)
        stats = StatsConfig(zone=tz) if isinstance(tz, str) else StatsConfig(offset_s=tz)

        def check(i: int, cand: Candidate = cand, user: str = user) -> object:
            return ac.caps.check(user, [cand])

        def record(i: int, cand: Candidate = cand, user: str = user, label: str = label) -> object:
            return ac.caps.record(user, f"{label}-{i}-{time.monotonic_ns()}", cand)

        def reserve(i: int, cid: str = cid, label: str = label) -> object:
            return ac.budgets.reserve(cid, f"{label}-{i}-{time.monotonic_ns()}", 1, 3600)

        def stats_record(i: int, cid: str = cid, cfg: StatsConfig = stats) -> object:
            ac.stats.config = cfg
            return ac.stats.record(cid, [Event(impressions=1, user_id=f"u{i % 100}")])

        out[f"freqcap check, 1 candidate x 3 rules ({label})"] = check
        out[f"freqcap record ({label})"] = record
        out[f"budget reserve ({label})"] = reserve
        out[f"stats record ({label})"] = stats_record
    return out


def measure(ac: AdCache, calls: int, rounds: int, zones: bool = True) -> dict[str, float]:
    todo = cases(ac, zones)
    usec: dict[str, int] = dict.fromkeys(todo, 0)
    n: dict[str, int] = dict.fromkeys(todo, 0)
    for r in range(rounds):
        # Every other round backwards, so that neither side always runs first.
        for name, fn in list(todo.items())[:: 1 if r % 2 == 0 else -1]:
            c0, u0 = _fcall_stats(ac)
            for i in range(calls):
                fn(i)
            c1, u1 = _fcall_stats(ac)
            usec[name] += u1 - u0
            n[name] += c1 - c0
    return {name: usec[name] / max(1, n[name]) for name in todo}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--url", default=None)
    ap.add_argument(
        "--library",
        default=None,
        help="Deploy this rendered library file instead (offset rows only).",
    )
    args = ap.parse_args()
    from adcache_loader.deploy import deploy
    from adcache_loader.servers import RedisServer

    server = None
    url = args.url
    if url is None:
        server = RedisServer().start()
        url = server.url
    try:
        source = Path(args.library).read_text() if args.library else None
        deploy(url, source=source)
        import redis

        ac = AdCache(redis.Redis.from_url(url))
        res = measure(ac, args.calls, args.rounds, zones=not args.library)
        noop = res["ac_version (no-op)"]
        print(f"{'call':<52} {'server µs':>10} {'× no-op':>8}")
        for name, us in res.items():
            print(f"{name:<52} {us:>10.1f} {us / noop:>8.2f}")
        ac.close()
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
