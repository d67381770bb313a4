"""The fused auction calls the ad decision uses: `ac_auction_open` (create, or read the auction
already there) and `ac_auction_bid_close` (bids, then the close, replying each imp's winner only).
Each must answer exactly what the calls it replaces answer, change nothing on bad input, and
close once however many callers race."""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from test_auction import BAD_BIDS, GOOD_HEAD, ONE_IMP, _bid, _raw, _snapshot

from adcache import (
    AdCache,
    AlreadyExistsError,
    ArityError,
    BadArgumentError,
    BadKeyError,
    Call,
    CorruptStateError,
    CrossSlotError,
    LimitExceededError,
    NotFoundError,
)
from adcache import _generated as keys
from adcache.auctions import Bid, Deal, Imp, ImpWin


def _wins(ac: AdCache, aid: str) -> list[ImpWin]:
    """What bid_close must answer, from the full result of the same auction."""
    res = ac.auctions.result(aid, settle=False)
    assert res is not None and res.state == "closed"
    return [
        ImpWin(i.imp_id, i.winner.cid, i.winner.price_micros, i.winner.crid, i.clearing_micros)
        if i.winner is not None
        else ImpWin(i.imp_id, None, 0, None, 0)
        for i in res.imps
    ]


def _outcome(ac: AdCache, aid: str) -> tuple[Any, ...]:
    res = ac.auctions.result(aid, settle=False)
    assert res is not None
    return (
        res.state,
        [(i.imp_id, i.winner.bid_id if i.winner else None, i.clearing_micros) for i in res.imps],
        [(b.bid_id, b.seat, b.imp_id, b.price_micros, b.seq, b.status, b.reason) for b in res.bids],
    )


def test_open_creates_once_then_answers_the_stored_auction(acs: AdCache, uid: str) -> None:
    assert acs.auctions.open(uid, [Imp("1", floor="0.50")], tmax_ms=60_000) is None
    acs.auctions.bid(uid, _bid("b1", "1.25"))
    before = _snapshot(acs, uid)
    again = acs.auctions.open(uid, [Imp("other")], tmax_ms=1_000)  # a retry: the first one stands
    assert again == acs.auctions.result(uid, settle=False)
    assert again is not None and again.state == "open" and [b.bid_id for b in again.bids] == ["b1"]
    assert _snapshot(acs, uid) == before
    with pytest.raises(AlreadyExistsError):
        acs.auctions.create(uid, [Imp("1")])
    # the same record as a create makes
    acs.auctions.create(uid + "c", [Imp("1", floor="0.50")], tmax_ms=60_000)
    made = acs.redis.hgetall(keys.auction(uid))
    ref = acs.redis.hgetall(keys.auction(uid + "c"))
    varying = {b"created", b"deadline", b"expires", b"seq"}
    assert {k: v for k, v in made.items() if k not in varying} == {
        k: v for k, v in ref.items() if k not in varying
    }


@pytest.mark.parametrize("seed", range(6))
def test_bid_close_answers_what_bid_then_close_answer(ac: AdCache, uid: str, seed: int) -> None:
    rng = random.Random(seed)
    imps = [
        Imp("a", floor="1.00"),
        Imp("b"),
        Imp("c", floor="0.50", deals=(Deal("d1", floor="2.00"),)),
    ]
    at = rng.choice([1, 2])
    bids = [
        Bid(
            bid_id=f"b{n}",
            imp_id=rng.choice("abc"),
            seat=rng.choice(["s1", "s2", "s3", "blocked"]),
            price=Decimal(rng.randrange(0, 16)) / 4,
            deal_id=rng.choice([None, None, "d1"]),
            cid=rng.choice([None, f"c{n}"]),
            crid=rng.choice([None, f"cr{n}"]),
        )
        for n in range(rng.randrange(0, 12))
    ]
    bids += bids[: rng.randrange(0, 3)]  # repeats answer their first reply
    one, two = f"{uid}-sep", f"{uid}-fused"
    for aid in (one, two):
        ac.auctions.create(aid, imps, at=at, tmax_ms=60_000, bseat=["blocked"])
    if seed % 2:  # an earlier attempt's bids are stored already
        ac.auctions.bid_many(one, bids[:3] or [_bid("x", "1", imp="b")])
        ac.auctions.bid_many(two, bids[:3] or [_bid("x", "1", imp="b")])
    if bids:
        ac.auctions.bid_many(one, bids)
    ac.auctions.close(one)
    got = ac.auctions.bid_close(two, bids)
    assert _outcome(ac, one) == _outcome(ac, two)
    assert got == _wins(ac, two)
    assert ac.auctions.bid_close(two, bids) == got  # a repeat: the same answer, nothing stored
    assert _outcome(ac, one) == _outcome(ac, two)


def test_bid_close_on_a_due_or_closed_auction(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=1)
    time.sleep(0.01)  # the deadline passes before any bid: due, not closed
    got = ac.auctions.bid_close(uid, [_bid("late", "5")])
    assert got == [ImpWin("1", None, 0, None, 0)]
    res = ac.auctions.result(uid, settle=False)
    assert res is not None and res.state == "closed"
    assert [(b.bid_id, b.status, b.reason) for b in res.bids] == [("late", "rejected", 2)]
    # closed: later bids are stored refused, the outcome stays
    ac.auctions.create(uid + "x", [Imp("1")], tmax_ms=60_000)
    first = ac.auctions.bid_close(uid + "x", [_bid("w", "2", cid="c1")])
    assert first == [ImpWin("1", "c1", 2_000_000, None, 10_000)]  # second price: floor + 0.01
    assert ac.auctions.bid_close(uid + "x", [_bid("more", "9", seat="s9", cid="c9")]) == first
    res = ac.auctions.result(uid + "x", settle=False)
    assert res is not None
    assert [(b.bid_id, b.status, b.reason) for b in res.bids] == [
        ("w", "won", 0),
        ("more", "rejected", 2),
    ]


# ---- bad input: a typed error and nothing written ----


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((3, *GOOD_HEAD[1:], *ONE_IMP), BadArgumentError),
        ((2, 1000, 60000, 5000, *GOOD_HEAD[4:], *ONE_IMP), BadArgumentError),
        ((*GOOD_HEAD, 1, "i1", "1.5", 0, 0), BadArgumentError),
        ((*GOOD_HEAD, 0), BadArgumentError),
        ((*GOOD_HEAD, 2, "i1", 0, 0, 0), ArityError),
        ((2, 1000), ArityError),
        ((*GOOD_HEAD, 33, *[x for n in range(33) for x in (f"i{n}", 0, 0, 0)]), LimitExceededError),
    ],
)
@pytest.mark.parametrize("exists", [False, True])
def test_bad_open_input(
    acs: AdCache, uid: str, args: tuple[Any, ...], error: type[Exception], exists: bool
) -> None:
    if exists:
        acs.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
        acs.auctions.bid(uid, _bid("first", "1"))
    before = _snapshot(acs, uid)
    with pytest.raises(error):
        acs.run(_raw("ac_auction_open", uid, *args))
    assert _snapshot(acs, uid) == before


@pytest.mark.parametrize(("bid", "error"), BAD_BIDS)
def test_bad_bid_close_input(
    acs: AdCache, uid: str, bid: tuple[str, ...], error: type[Exception]
) -> None:
    acs.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    acs.auctions.bid(uid, _bid("first", "1"))
    before = _snapshot(acs, uid)
    with pytest.raises(error):
        acs.run(_raw("ac_auction_bid_close", uid, *bid))
    assert _snapshot(acs, uid) == before  # not closed either


def test_bid_close_bounds_and_keys(ac: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        ac.auctions.bid_close(uid, [_bid("a", "1")])
    assert ac.redis.exists(keys.auction(uid), keys.auction_bids(uid)) == 0
    ac.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    ac.auctions.bid_many(uid, [_bid(f"b{n}", "1", seat=f"s{n}") for n in range(255)])
    before = _snapshot(ac, uid)
    with pytest.raises(LimitExceededError):  # 257 stored bids
        ac.auctions.bid_close(uid, [_bid("x", "1"), _bid("y", "1")])
    with pytest.raises(CrossSlotError):
        ac.run(_raw_keys(uid, keys.auction(uid), keys.auction_bids(uid + "x")))
    with pytest.raises(BadKeyError):
        ac.run(_raw_keys(uid, keys.auction_bids(uid), keys.auction(uid)))
    assert _snapshot(ac, uid) == before
    ac.redis.delete(keys.auction(uid))
    ac.redis.hset(keys.auction(uid), "state", "open")
    with pytest.raises(CorruptStateError):
        ac.auctions.bid_close(uid, [])


def _raw_keys(uid: str, k1: str, k2: str) -> Call[Any]:
    return Call("ac_auction_bid_close", (k1, k2), (), lambda r: r)


# ---- at once ----


def test_bid_close_racing_callers_close_once(ac: AdCache, lib_standalone: Any, uid: str) -> None:
    """Callers bid and close the same auctions at once: each auction closes once, every caller
    gets the recorded outcome, and the bids of callers after the close are refused (expired)."""
    auctions = [f"{uid}-{n}" for n in range(3)]
    for a in auctions:
        ac.auctions.create(a, [Imp("1", floor="0.50"), Imp("2")], tmax_ms=120_000)
    replies: dict[str, list[list[ImpWin]]] = {a: [] for a in auctions}
    lock = threading.Lock()
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def caller(t: int) -> None:
        rng = random.Random(7 + t)
        cache = AdCache(lib_standalone.client())
        try:
            start.wait()
            for a in auctions:
                bids = [
                    _bid(
                        f"t{t}-{n}",
                        Decimal(rng.randrange(1, 12)) / 4,
                        imp=str(1 + n % 2),
                        seat=f"s{t}",
                        cid=f"c{t}-{n}",
                    )
                    for n in range(3)
                ]
                got = cache.auctions.bid_close(a, bids)
                with lock:
                    replies[a].append(got)
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)
        finally:
            cache.close()

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for a in auctions:
        want = _wins(ac, a)
        assert all(r == want for r in replies[a])
        res = ac.auctions.result(a, settle=False)
        assert res is not None and len(res.bids) == 24
        accepted = [b for b in res.bids if b.status in ("won", "lost")]
        refused = [b for b in res.bids if b.status == "rejected"]
        # one caller's bids were judged open (the first), every later caller's after the close
        assert {b.seat for b in accepted} <= {accepted[0].seat} if accepted else True
        assert all(b.reason in (2, 100) for b in refused)
        assert all(b.reason == 100 for b in refused if b.seat == res.bids[0].seat)


def test_bid_close_on_a_fresh_auction_checks_the_bids_key_before_writing(
    ac: AdCache, uid: str
) -> None:
    """No bid stored yet: the bids hash is not read, and its first write refuses a foreign
    value before the auction changed."""
    ac.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    ac.redis.set(keys.auction_bids(uid), "foreign")
    before = ac.redis.hgetall(keys.auction(uid))
    with pytest.raises(CorruptStateError):
        ac.auctions.bid_close(uid, [_bid("a", "1")])
    assert ac.redis.hgetall(keys.auction(uid)) == before
    assert ac.redis.get(keys.auction_bids(uid)) == b"foreign"
