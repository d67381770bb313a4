"""A full auction (create, 3 bids, close) on one standalone server: ours, one FCALL per step and
with the 3 bids in one FCALL, against the predecessor's way (float prices, a "highest bid so far"
hash, one round trip per step: create pipeline, 3 script bids, read the winner, delete) and
against the no-op `FCALL_RO ac_version 0` (the floor of any one call).

    PYTHONPATH=python_client:loader:. ADCACHE_BENCH_SCALE=0.3 python -m benchmarks --only auction
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime

from adcache.auctions import Bid, Imp
from benchmarks.env import BenchEnv
from benchmarks.harness import Result, commands_per_op, ratio, round_trips, side_by_side

# The predecessor's bid script, as it was: compares floats, keeps only the highest bid.
PREDECESSOR_BID = """
local auction_key = KEYS[1]
local bid_price = tonumber(ARGV[1])
local campaign_id = ARGV[2]
local ttl = tonumber(ARGV[3])
local current_bid = redis.call('HGET', auction_key, 'highest_bid')
if current_bid == false then current_bid = 0 else current_bid = tonumber(current_bid) end
if bid_price > current_bid then
    redis.call('HSET', auction_key, 'highest_bid', bid_price)
    redis.call('HSET', auction_key, 'winning_campaign', campaign_id)
    redis.call('EXPIRE', auction_key, ttl)
    return 1
end
return 0
"""

BIDS = (("seat-a", "c-1", "2.50"), ("seat-b", "c-2", "3.00"), ("seat-c", "c-3", "2.80"))


def run(env: BenchEnv) -> list[Result]:
    ac = env.adcache()
    r = ac.redis
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ids = itertools.count()
    imps = [Imp("1", floor="1.00")]
    bids = [Bid(f"b{n}", "1", seat, price, cid=cid) for n, (seat, cid, price) in enumerate(BIDS)]

    def ours() -> None:
        aid = f"{prefix}-{next(ids)}"
        ac.auctions.create(aid, imps, tmax_ms=1000, exp=1, ttl=5)
        for b in bids:
            ac.auctions.bid(aid, b)
        ac.auctions.close(aid)

    def ours_batched() -> None:
        aid = f"{prefix}-{next(ids)}"
        ac.auctions.create(aid, imps, tmax_ms=1000, exp=1, ttl=5)
        ac.auctions.bid_many(aid, bids)
        ac.auctions.close(aid)

    script = r.register_script(PREDECESSOR_BID)

    def predecessor() -> None:
        key = f"rtb:{prefix}-{next(ids)}"
        pipe = r.pipeline()
        pipe.hset(
            key,
            mapping={
                "auction_id": key,
                "floor_price": 1.0,
                "highest_bid": 0,
                "winning_campaign": "",
                "created_at": datetime.now().isoformat(),
            },
        )
        pipe.expire(key, 120)
        pipe.execute()
        for _seat, cid, price in BIDS:
            script(keys=[key], args=[float(price), cid, 120])
        data = r.hgetall(key)
        float(data[b"highest_bid"])  # the winner, as the predecessor read it
        r.delete(key)

    def noop() -> None:
        r.execute_command("FCALL_RO", "ac_version", 0)

    cases = {
        "adcache: create, 3 bid calls, close": ours,
        "adcache: create, 1 bid call of 3, close": ours_batched,
        "predecessor-style (floats, highest-bid hash)": predecessor,
        "FCALL_RO ac_version (no-op, 1 call)": noop,
    }
    res = side_by_side("auction (standalone)", cases, calls=env.calls(3000))
    o, ob = (
        res["adcache: create, 3 bid calls, close"],
        res["adcache: create, 1 bid call of 3, close"],
    )
    p, n = (
        res["predecessor-style (floats, highest-bid hash)"],
        res["FCALL_RO ac_version (no-op, 1 call)"],
    )
    o.round_trips_per_op = round_trips(commands_per_op([r], ours), scripted=True)
    ob.round_trips_per_op = round_trips(commands_per_op([r], ours_batched), scripted=True)
    per = commands_per_op([r], predecessor)
    # Inner script commands are counted by Redis too: the client's requests are the EVALSHAs, the
    # winner read, the delete and the one create pipeline (HSET + EXPIRE).
    p.round_trips_per_op = per.get("evalsha", 0) + per.get("hgetall", 0) + per.get("del", 0) + 1
    n.round_trips_per_op = 1.0
    o.note = (
        f"{ratio(o, p):.2f}× predecessor; runs at"
        f" {o.ops_per_s * o.round_trips_per_op / n.ops_per_s:.0%} of the speed of as many no-op calls"
    )
    ob.note = f"{ratio(ob, p):.2f}× predecessor, {ratio(ob, o):.2f}× one call per bid"
    if ob.round_trips_per_op:
        ob.note += (
            f"; runs at {ob.ops_per_s * ob.round_trips_per_op / n.ops_per_s:.0%}"
            " of the speed of as many no-op calls"
        )
    p.note = "no floor, no second price, late bids accepted, no idempotency"
    return list(res.values())
