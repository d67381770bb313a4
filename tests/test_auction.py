"""Auctions end to end on real Redis: prices, floors, deals, ties, lateness, idempotency, billing,
bad input, cluster spread and many concurrent bidders."""

from __future__ import annotations

import random
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
import redis

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
    aio,
)
from adcache import _generated as keys
from adcache.auctions import (
    FIRST_PRICE,
    AuctionResult,
    Bid,
    Deal,
    Imp,
    LossReason,
    cpm,
    expand,
    notices,
)
from adcache.money import to_micros


def _bid(bid_id: str, price: Any, *, imp: str = "1", seat: str = "s1", **kw: Any) -> Bid:
    return Bid(bid_id=bid_id, imp_id=imp, seat=seat, price=price, **kw)


def _snapshot(ac: AdCache, aid: str) -> tuple[Any, ...]:
    r = ac.redis
    k1, k2 = keys.auction(aid), keys.auction_bids(aid)
    return (r.type(k1), r.hgetall(k1) if r.exists(k1) else None, r.hgetall(k2))


def _raw(fn: str, aid: str, *args: str | int, nkeys: int = 2) -> Call[Any]:
    ks = (keys.auction(aid), keys.auction_bids(aid))[:nkeys]
    return Call(fn, ks, tuple(args), lambda r: r)


BID_BLANKS = ("", "", "", "", "", "", "")  # deal cid crid adomain nurl lurl burl


# ---- prices ----


def test_second_price_floor_and_loss_reasons(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1", floor="1.00")], tmax_ms=60_000)
    replies = acs.auctions.bid_many(
        uid,
        [
            _bid("b1", "1.50", seat="s1", cid="c1", crid="cr1", adomain=("a.example",)),
            _bid("b2", "1.20", seat="s2"),
            _bid("b3", "0.90", seat="s3"),
        ],
    )
    assert [(r.accepted, r.reason) for r in replies] == [(True, 0), (True, 0), (False, 100)]
    assert replies[2].loss_reason is LossReason.BELOW_FLOOR
    assert [r.seq for r in replies] == [1, 2, 3]
    res = acs.auctions.close(uid)
    assert res.state == "closed" and res.closed_ms > 0
    w = res.winner("1")
    assert w is not None and (w.bid_id, w.seat, w.cid, w.crid) == ("b1", "s1", "c1", "cr1")
    assert w.adomain == ("a.example",)
    assert res.imp("1").clearing_micros == to_micros("1.21")  # 1.20 + 0.01
    assert [(b.bid_id, b.status, b.reason) for b in res.bids] == [
        ("b1", "won", 0),
        ("b2", "lost", 102),
        ("b3", "rejected", 100),
    ]


@pytest.mark.parametrize(
    ("floor", "bids", "increment", "clearing"),
    [
        ("0", ["2.00"], "0.01", "0.01"),  # lone bid, no floor: floor + increment
        ("1.00", ["2.00"], "0.01", "1.01"),  # lone bid: the floor sets the price
        ("1.00", ["1.005"], "0.01", "1.005"),  # never above the winning bid
        ("1.00", ["3.00", "2.50"], "0", "2.50"),  # increment configurable
        ("1.00", ["3.00", "2.50"], "0.25", "2.75"),
        ("1.00", ["2.00", "2.00"], "0.01", "2.00"),  # tie: capped at the bid itself
        ("0.50", ["0.75", "0.50"], "0.01", "0.51"),  # a bid equal to the floor is accepted
    ],
)
def test_second_price_clearing(
    ac: AdCache, uid: str, floor: str, bids: list[str], increment: str, clearing: str
) -> None:
    ac.auctions.create(uid, [Imp("1", floor=floor)], increment=increment, tmax_ms=60_000)
    for n, p in enumerate(bids):
        assert ac.auctions.bid(uid, _bid(f"b{n}", p, seat=f"s{n}")).accepted
    res = ac.auctions.close(uid)
    assert res.imp("1").clearing_micros == to_micros(clearing)
    assert res.increment_micros == to_micros(increment)


def test_first_price_pays_the_bid(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1", floor="0.5")], at=FIRST_PRICE, tmax_ms=60_000)
    ac.auctions.bid_many(uid, [_bid("a", "0.80"), _bid("b", "1.234567", seat="s2")])
    res = ac.auctions.close(uid)
    assert res.at == 1
    w = res.winner("1")
    assert w is not None and w.bid_id == "b"
    assert res.imp("1").clearing_micros == 1_234_567


def test_tie_goes_to_the_earliest_bid(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    acs.auctions.bid(uid, _bid("z-first", "2.00", seat="late-alphabet"))
    acs.auctions.bid(uid, _bid("a-second", "2.00", seat="a"))
    acs.auctions.bid(uid, _bid("c-low", "1.00", seat="c"))
    res = acs.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and w.bid_id == "z-first"
    assert res.bid("a-second").status == "lost" and res.bid("a-second").reason == 102
    assert res.imp("1").clearing_micros == to_micros("2.00")


def test_no_bids_no_winner(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1", floor=1)], tmax_ms=60_000)
    ac.auctions.bid(uid, _bid("low", "0.5"))
    res = ac.auctions.close(uid)
    assert res.winner("1") is None and res.imp("1").clearing_micros == 0
    assert res.bid("low").status == "rejected"


def test_multi_imp_request(acs: AdCache, uid: str) -> None:
    acs.auctions.create(
        uid, [Imp("banner", floor="1"), Imp("video", floor="5"), Imp("empty")], tmax_ms=60_000
    )
    acs.auctions.bid_many(
        uid,
        [
            _bid("b1", "2", imp="banner", seat="s1"),
            _bid("v1", "6", imp="video", seat="s1"),
            _bid("b2", "3", imp="banner", seat="s2"),
            _bid("v2", "4.99", imp="video", seat="s2"),
            _bid("v3", "9", imp="video", seat="s3"),
        ],
    )
    res = acs.auctions.close(uid)
    assert [i.imp_id for i in res.imps] == ["banner", "video", "empty"]
    bw, vw = res.winner("banner"), res.winner("video")
    assert bw is not None and vw is not None
    assert (bw.bid_id, res.imp("banner").clearing_micros) == ("b2", to_micros("2.01"))
    assert (vw.bid_id, res.imp("video").clearing_micros) == ("v3", to_micros("6.01"))
    assert res.winner("empty") is None
    assert res.bid("v2").reason == LossReason.BELOW_FLOOR


# ---- deals, private auctions, seats ----


def test_deals_and_deal_floors(acs: AdCache, uid: str) -> None:
    imp = Imp(
        "1",
        floor="2.00",
        deals=(Deal("open-deal", "1.00"), Deal("seat-deal", "3.00", wseat=("s-ok",))),
    )
    acs.auctions.create(uid, [imp], tmax_ms=60_000)
    replies = acs.auctions.bid_many(
        uid,
        [
            _bid("d-below", "0.99", deal_id="open-deal", seat="s1"),
            _bid("d-ok", "1.50", deal_id="open-deal", seat="s2"),  # under imp floor, over deal's
            _bid("blocked", "9", deal_id="seat-deal", seat="s-no"),
            _bid("unknown", "9", deal_id="no-such-deal", seat="s3"),
            _bid("open", "1.90", seat="s4"),  # open market, under the imp floor
        ],
    )
    assert [r.reason for r in replies] == [101, 0, 104, 4, 100]
    res = acs.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and w.bid_id == "d-ok" and w.deal_id == "open-deal"
    # alone on the imp: the deal floor sets the price
    assert res.imp("1").clearing_micros == to_micros("1.01")
    assert res.bid("d-below").floor_micros == to_micros("1.00")
    assert res.bid("open").floor_micros == to_micros("2.00")


def test_deal_and_open_bids_compete_on_price(ac: AdCache, uid: str) -> None:
    imp = Imp("1", floor="1.00", deals=(Deal("d", "2.00"),))
    ac.auctions.create(uid, [imp], tmax_ms=60_000)
    ac.auctions.bid_many(
        uid, [_bid("deal", "2.50", deal_id="d", seat="a"), _bid("open", "2.20", seat="b")]
    )
    res = ac.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and w.bid_id == "deal"
    assert res.imp("1").clearing_micros == to_micros("2.21")


@pytest.mark.parametrize(
    ("deal_at", "clearing"),
    [(None, "2.21"), (2, "2.21"), (1, "2.50"), (3, "2.00")],
)
def test_a_deal_may_set_its_own_auction_type(
    ac: AdCache, uid: str, deal_at: int | None, clearing: str
) -> None:
    imp = Imp("1", floor="1.00", deals=(Deal("d", "2.00", at=deal_at),))
    ac.auctions.create(uid, [imp], tmax_ms=60_000)  # a second-price auction
    ac.auctions.bid_many(
        uid, [_bid("deal", "2.50", deal_id="d", seat="a"), _bid("open", "2.20", seat="b")]
    )
    res = ac.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and w.bid_id == "deal"
    assert res.imp("1").clearing_micros == to_micros(clearing)


def test_private_auction_takes_deal_bids_only(acs: AdCache, uid: str) -> None:
    imp = Imp("1", floor="0.10", private=True, deals=(Deal("pd", "1.00", wseat=("s1", "s2")),))
    acs.auctions.create(uid, [imp], tmax_ms=60_000)
    replies = acs.auctions.bid_many(
        uid,
        [
            _bid("open-high", "50", seat="s1"),
            _bid("deal-low", "1.50", deal_id="pd", seat="s1"),
            _bid("deal-high", "2.00", deal_id="pd", seat="s2"),
            _bid("deal-wrong-seat", "3.00", deal_id="pd", seat="s3"),
        ],
    )
    assert [r.reason for r in replies] == [4, 0, 0, 104]
    res = acs.auctions.close(uid)
    assert res.imp("1").private
    w = res.winner("1")
    assert w is not None and w.bid_id == "deal-high"
    assert res.imp("1").clearing_micros == to_micros("1.51")


def test_auction_seat_lists(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], wseat=("s1", "s2"), bseat=("s2",), tmax_ms=60_000)
    replies = ac.auctions.bid_many(
        uid, [_bid("a", "1", seat="s1"), _bid("b", "2", seat="s2"), _bid("c", "3", seat="s3")]
    )
    assert [r.reason for r in replies] == [0, 104, 104]
    assert replies[1].loss_reason is LossReason.SEAT_BLOCKED


# ---- time: late bids, lazy close ----


def test_late_bid_is_expired_and_closes_lazily(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=150)
    assert ac.auctions.bid(uid, _bid("early", "1")).accepted
    time.sleep(0.25)
    late = ac.auctions.bid(uid, _bid("late", "5", seat="s2"))
    assert not late.accepted and late.reason == LossReason.EXPIRED
    res = ac.auctions.result(uid, settle=False)
    assert res is not None and res.state == "closed", "the late bid's write path closed it"
    w = res.winner("1")
    assert w is not None and w.bid_id == "early"
    assert res.bid("late").status == "rejected" and res.bid("late").reason == 2


def test_result_is_read_only_and_reports_due(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1")], tmax_ms=150)
    acs.auctions.bid_many(uid, [_bid("a", "1"), _bid("b", "2", seat="s2")])
    open_ = acs.auctions.result(uid)
    assert open_ is not None and open_.state == "open" and open_.winner("1") is None
    assert {b.status for b in open_.bids} == {"pending"}
    time.sleep(0.25)
    due = acs.auctions.result(uid, settle=False)
    assert due is not None and due.state == "due" and due.closed_ms == 0
    assert acs.redis.hget(keys.auction(uid), "state") in (b"open", "open")
    w = due.winner("1")
    assert w is not None and w.bid_id == "b"
    settled = acs.auctions.result(uid)  # settles: records the close
    assert settled is not None and settled.state == "closed"
    assert settled.winner("1") == due.winner("1")
    assert settled.imp("1").clearing_micros == due.imp("1").clearing_micros
    assert settled.ended_ms == settled.deadline_ms, "bidding ended at the deadline"


def test_closed_auction_refuses_bids(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    ac.auctions.bid(uid, _bid("a", "1"))
    first = ac.auctions.close(uid)
    assert first.ended_ms == first.closed_ms < first.deadline_ms
    r = ac.auctions.bid(uid, _bid("b", "9", seat="s2"))
    assert (r.accepted, r.reason) == (False, 2)
    again = ac.auctions.close(uid)
    assert again.imps == first.imps, "closing again changes nothing"
    assert again.closed_ms == first.closed_ms
    assert [b.bid_id for b in again.bids] == ["a", "b"]


# ---- idempotency ----


def test_duplicate_bid_ids_count_once(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1", floor="1")], tmax_ms=60_000)
    first = acs.auctions.bid(uid, _bid("x", "2"))
    again = acs.auctions.bid(uid, _bid("x", "7", crid="other"))  # same id, other content
    assert again.duplicate and not first.duplicate
    assert (again.bid_id, again.accepted, again.reason, again.seq) == ("x", True, 0, first.seq)
    low = acs.auctions.bid(uid, _bid("y", "0.5"))
    low_again = acs.auctions.bid(uid, _bid("y", "5"))
    assert not low_again.accepted and low_again.reason == 100 and low_again.seq == low.seq
    batch = acs.auctions.bid_many(uid, [_bid("z", "3"), _bid("z", "4"), _bid("x", "9")])
    assert [(r.bid_id, r.duplicate, r.seq) for r in batch] == [
        ("z", False, 3),
        ("z", True, 3),
        ("x", True, first.seq),
    ]
    assert acs.redis.hlen(keys.auction_bids(uid)) == 3
    res = acs.auctions.close(uid)
    assert len(res.bids) == 3
    assert res.bid("x").price_micros == to_micros(2), "the first submission is what counts"
    w = res.winner("1")
    assert w is not None and w.bid_id == "z"


def test_bid_ids_are_unique_per_seat_only(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    replies = acs.auctions.bid_many(
        uid,
        [
            _bid("1", "2", seat="dsp-a"),
            _bid("1", "3", seat="dsp-b"),  # another bidder's bid "1": a bid of its own
            _bid("1", "9", seat="dsp-a"),  # dsp-a's "1" again: a repeat
        ],
    )
    assert [(r.accepted, r.duplicate, r.seq) for r in replies] == [
        (True, False, 1),
        (True, False, 2),
        (True, True, 1),
    ]
    res = acs.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and (w.seat, w.bid_id, w.price_micros) == ("dsp-b", "1", 3_000_000)
    assert res.bid("1", seat="dsp-a").status == "lost"
    assert res.bid("1", seat="dsp-a").min_to_win_micros == 3_000_000
    assert acs.auctions.bill(uid, "1", seat="dsp-a").status == "not_won"
    assert acs.auctions.bill(uid, "1", seat="dsp-b").status == "billed"
    with pytest.raises(ArityError):
        acs.run(_raw("ac_auction_bill", uid, "1"))
    with pytest.raises(BadArgumentError):
        acs.run(_raw("ac_auction_bill", uid, "dsp-a", "x{1}"))


def test_bill_is_idempotent_and_windowed(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("1", floor="1")], tmax_ms=60_000, exp=60)
    acs.auctions.bid_many(uid, [_bid("w", "3"), _bid("l", "2", seat="s2")])
    assert acs.auctions.bill(uid, "w", seat="s1").status == "open"
    acs.auctions.close(uid)
    b1 = acs.auctions.bill(uid, "w", seat="s1")
    assert (b1.status, b1.price_micros, b1.imp_id, b1.charge) == (
        "billed",
        to_micros("2.01"),
        "1",
        True,
    )
    b2 = acs.auctions.bill(uid, "w", seat="s1")
    assert (b2.status, b2.price_micros, b2.charge) == ("already_billed", to_micros("2.01"), False)
    assert acs.auctions.bill(uid, "l", seat="s2").status == "not_won"
    assert acs.auctions.bill(uid, "nobody", seat="s1").status == "unknown_bid"
    res = acs.auctions.result(uid)
    assert res is not None and res.imp("1").billed


def test_bill_after_the_window_is_refused(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=100, exp=0.15)
    ac.auctions.bid(uid, _bid("w", "3"))
    time.sleep(0.3)  # deadline (0.1 s) + window (0.15 s) are over
    late = ac.auctions.bill(uid, "w", seat="s1")
    assert (late.status, late.price_micros) == ("expired", 0)
    res = ac.auctions.result(uid, settle=False)
    assert res is not None and res.state == "closed", "bill closed the due auction"
    assert not res.imp("1").billed


def test_bill_closes_a_due_auction(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=100, exp=30)
    ac.auctions.bid(uid, _bid("w", "3"))
    time.sleep(0.2)
    b = ac.auctions.bill(uid, "w", seat="s1")
    assert (b.status, b.price_micros) == ("billed", to_micros("0.01"))


# ---- notices ----


def test_notice_macros(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1", floor="0.50")], tmax_ms=60_000)
    ac.auctions.bid_many(
        uid,
        [
            _bid(
                "w",
                "2.50",
                seat="sw",
                nurl="https://w.example/win?p=${AUCTION_PRICE}&a=${AUCTION_ID}&b=${AUCTION_BID_ID}",
                burl="https://w.example/bill?p=${auction_price}&i=${AUCTION_IMP_ID}&x=${AUCTION_AD_ID}",
                lurl="https://w.example/loss",
            ),
            _bid(
                "l",
                "1.75",
                seat="sl",
                nurl="https://l.example/win",
                lurl="https://l.example/loss?r=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}&s=${AUCTION_SEAT_ID}",
            ),
            _bid(
                "f",
                "0.10",
                seat="sf",
                lurl="https://f.example/loss?r=${AUCTION_LOSS}&m=${AUCTION_MIN_TO_WIN}",
            ),
        ],
    )
    assert notices(ac.auctions.result(uid) or _fail()) == [], "no notices while open"
    res = ac.auctions.close(uid)
    got = {(n.kind, n.bid_id): n.url for n in notices(res)}
    assert got == {
        ("win", "w"): f"https://w.example/win?p=1.76&a={uid}&b=w",
        ("billing", "w"): "https://w.example/bill?p=1.76&i=1&x=${AUCTION_AD_ID}",
        ("loss", "l"): "https://l.example/loss?r=102&m=2.5&s=sl",
        ("loss", "f"): "https://f.example/loss?r=100&m=2.5",
    }
    assert res.bid("w").min_to_win_micros == to_micros("1.76")


def _fail() -> AuctionResult:
    raise AssertionError("no result")


def test_cpm_format_and_expand() -> None:
    assert [cpm(m) for m in (0, 1, 10_000, 1_500_000, 2_000_000, 123_456_789)] == [
        "0",
        "0.000001",
        "0.01",
        "1.5",
        "2",
        "123.456789",
    ]
    assert (
        expand(
            "${AUCTION_PRICE}/${OTHER}/${Auction_Loss}", {"AUCTION_PRICE": "1", "AUCTION_LOSS": "2"}
        )
        == "1/${OTHER}/2"
    )


# ---- records, keys, TTL ----


def test_keys_share_the_tag_and_expire(acs: AdCache, uid: str) -> None:
    c = acs.auctions.create(uid, [Imp("1")], tmax_ms=200, exp=10, ttl=30)
    assert c.deadline_ms == c.created_ms + 200 and c.expires_ms == c.created_ms + 30_000
    assert acs.redis.exists(keys.auction_bids(uid)) == 0, "no bids hash before the first bid"
    acs.auctions.bid(uid, _bid("a", "1"))
    for k in (keys.auction(uid), keys.auction_bids(uid)):
        assert "{a:" + uid + "}" in k
        assert acs.redis.pexpiretime(k) == c.expires_ms


def test_create_twice_is_refused_and_keeps_the_first(acs: AdCache, uid: str) -> None:
    acs.auctions.create(uid, [Imp("first", floor=1)], tmax_ms=60_000)
    before = _snapshot(acs, uid)
    with pytest.raises(AlreadyExistsError):
        acs.auctions.create(uid, [Imp("second")], tmax_ms=60_000)
    assert _snapshot(acs, uid) == before


# ---- bad input: a typed error and nothing written ----


GOOD_HEAD = (2, 1000, 60000, 120000, 10000, 0, 0)
ONE_IMP = (1, "i1", 1000000, 0, 0)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ((3, *GOOD_HEAD[1:], *ONE_IMP), BadArgumentError),  # at
        ((2, 0, *GOOD_HEAD[2:], *ONE_IMP), BadArgumentError),  # tmax
        ((2, 1000, 60000, 5000, *GOOD_HEAD[4:], *ONE_IMP), BadArgumentError),  # ttl < tmax + exp
        ((*GOOD_HEAD[:4], -1, 0, 0, *ONE_IMP), BadArgumentError),  # increment
        ((*GOOD_HEAD, 1, "i1", -5, 0, 0), BadArgumentError),  # negative floor
        ((*GOOD_HEAD, 1, "i1", "1.5", 0, 0), BadArgumentError),  # non-integer micros
        ((*GOOD_HEAD, 1, "i1", 0, 1, 0), BadArgumentError),  # private without deals
        ((*GOOD_HEAD, 2, "i1", 0, 0, 0, "i1", 0, 0, 0), BadArgumentError),  # imp twice
        ((*GOOD_HEAD, 1, "i{1}", 0, 0, 0), BadArgumentError),
        ((*GOOD_HEAD, 1, "i" * 129, 0, 0, 0), BadArgumentError),
        ((*GOOD_HEAD, 0), BadArgumentError),  # no imps
        ((*GOOD_HEAD, 1, "i1", 0, 0, 1, "d", 0, 0, 0, "extra"), ArityError),
        ((*GOOD_HEAD, 1, "i1", 0, 0, 1, "d", 0, 4, 0), BadArgumentError),  # deal at
        (
            (*GOOD_HEAD, 1, "i1", 0, 0, 2, "d", 0, 0, 0, "d", 0, 0, 0),
            BadArgumentError,
        ),  # deal twice
        ((*GOOD_HEAD, 2, "i1", 0, 0, 0), ArityError),  # one imp missing
        ((*GOOD_HEAD, 33, *[x for n in range(33) for x in (f"i{n}", 0, 0, 0)]), LimitExceededError),
        (
            (*GOOD_HEAD, 1, "i1", 0, 0, 65, *[x for n in range(65) for x in (f"d{n}", 0, 0, 0)]),
            LimitExceededError,
        ),
        ((*GOOD_HEAD[:5], 65, *[f"s{n}" for n in range(65)], 0, *ONE_IMP), LimitExceededError),
        ((2, 1000), ArityError),
    ],
)
def test_bad_create_input(
    acs: AdCache, uid: str, args: tuple[Any, ...], error: type[Exception]
) -> None:
    with pytest.raises(error):
        acs.run(_raw("ac_auction_create", uid, *args, nkeys=1))
    assert acs.redis.exists(keys.auction(uid)) == 0


# Bad bid arguments, for ac_auction_bid and ac_auction_bid_close (test_auction_fused).
BAD_BIDS: list[tuple[tuple[str, ...], type[Exception]]] = [
    (("s1", "b9", "1", "-1", *BID_BLANKS), BadArgumentError),  # negative price
    (("s1", "b9", "1", "abc", *BID_BLANKS), BadArgumentError),  # non-numeric price
    (("s1", "b9", "1", "1.5", *BID_BLANKS), BadArgumentError),  # not integer micros
    (("s1", "b9", "1", "", *BID_BLANKS), BadArgumentError),
    (("s1", "b9", "1", "99999999999999999999", *BID_BLANKS), BadArgumentError),
    (("s1", "b9", "nope", "100", *BID_BLANKS), BadArgumentError),  # unknown imp
    (("s1", "b" * 129, "1", "100", *BID_BLANKS), BadArgumentError),  # oversized ids
    (("s" * 129, "b9", "1", "100", *BID_BLANKS), BadArgumentError),
    (("s1", "b9", "1", "100", "d" * 129, *BID_BLANKS[1:]), BadArgumentError),
    (("s1", "b9", "1", "100", "", "c" * 129, *BID_BLANKS[2:]), BadArgumentError),
    (("s1", "b9", "1", "100", *BID_BLANKS[:4], "u" * 2049, "", ""), BadArgumentError),
    (("s1", "b{9}", "1", "100", *BID_BLANKS), BadArgumentError),
    (("", "b9", "1", "100", *BID_BLANKS), BadArgumentError),
    (("s1", "b9", "1", "100"), ArityError),
    # a good bid followed by a bad one: the whole call is refused
    (
        ("s1", "ok", "1", "100", *BID_BLANKS, "s1", "b9", "1", "-1", *BID_BLANKS),
        BadArgumentError,
    ),
    (
        tuple(x for n in range(257) for x in ("s", f"b{n}", "1", "1", *BID_BLANKS)),
        LimitExceededError,
    ),
]


@pytest.mark.parametrize(("bid", "error"), BAD_BIDS)
def test_bad_bid_input(
    acs: AdCache, uid: str, bid: tuple[str, ...], error: type[Exception]
) -> None:
    acs.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    acs.auctions.bid(uid, _bid("first", "1"))
    before = _snapshot(acs, uid)
    with pytest.raises(error):
        acs.run(_raw("ac_auction_bid", uid, *bid))
    assert _snapshot(acs, uid) == before


def test_bids_per_auction_are_bounded(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    ac.auctions.bid_many(uid, [_bid(f"b{n}", "1", seat=f"s{n}") for n in range(256)])
    before = _snapshot(ac, uid)
    with pytest.raises(LimitExceededError):
        ac.auctions.bid(uid, _bid("one-more", "1"))
    assert _snapshot(ac, uid) == before
    assert ac.auctions.bid(uid, _bid("b7", "5", seat="s7")).duplicate, "a repeat still answers"


def test_unknown_auction(acs: AdCache, uid: str) -> None:
    with pytest.raises(NotFoundError):
        acs.auctions.bid(uid, _bid("a", "1"))
    with pytest.raises(NotFoundError):
        acs.auctions.close(uid)
    with pytest.raises(NotFoundError):
        acs.auctions.bill(uid, "a", seat="s1")
    assert acs.auctions.result(uid) is None
    assert acs.redis.exists(keys.auction(uid), keys.auction_bids(uid)) == 0


def test_wrong_keys(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=60_000)
    with pytest.raises(CrossSlotError):
        ac.run(
            Call(
                "ac_auction_close",
                (keys.auction(uid), keys.auction_bids(uid + "x")),
                (),
                lambda r: r,
            )
        )
    with pytest.raises(BadKeyError):
        ac.run(
            Call("ac_auction_close", (keys.auction_bids(uid), keys.auction(uid)), (), lambda r: r)
        )
    with pytest.raises(ArityError):
        ac.run(Call("ac_auction_close", (keys.auction(uid),), (), lambda r: r))
    assert ac.auctions.result(uid, settle=False).state == "open"  # type: ignore[union-attr]


def test_foreign_data_is_reported(ac: AdCache, uid: str) -> None:
    ac.redis.set(keys.auction(uid), "not a hash")
    with pytest.raises(CorruptStateError):
        ac.auctions.bid(uid, _bid("a", "1"))
    ac.redis.delete(keys.auction(uid))
    ac.redis.hset(keys.auction(uid), "state", "open")
    with pytest.raises(CorruptStateError):
        ac.auctions.close(uid)


def test_python_edge_converts_prices_exactly(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1", floor=0.1)], tmax_ms=60_000, increment=Decimal("0"))
    ac.auctions.bid_many(uid, [_bid("a", 0.3), _bid("b", Decimal("0.2999995"), seat="s2")])
    res = ac.auctions.close(uid)
    assert res.imp("1").floor_micros == 100_000
    assert res.bid("a").price_micros == 300_000
    assert res.bid("b").price_micros == 300_000  # half-even to the micro: a tie, "a" came first
    w = res.winner("1")
    assert w is not None and w.bid_id == "a" and res.imp("1").clearing_micros == 300_000
    with pytest.raises(BadArgumentError):
        ac.auctions.bid(uid, _bid("c", "abc"))


# ---- cluster: auctions over every shard ----


def test_auctions_spread_over_every_shard(ac_cluster: AdCache, uid: str) -> None:
    ids = [f"{uid}-{n}" for n in range(24)]
    rc: redis.RedisCluster = ac_cluster.redis  # type: ignore[assignment]
    owners = {rc.get_node_from_key(keys.auction(a)).name for a in ids}
    assert len(owners) == len(rc.get_primaries()), "ids must spread over every primary"
    ac_cluster.run_many([ac_cluster_create(a) for a in ids])
    for n, a in enumerate(ids):
        ac_cluster.auctions.bid_many(
            a,
            [_bid("x", n + 1, seat="sx"), _bid("y", n + 2, seat="sy"), _bid("z", "0.5", seat="sz")],
        )
    results = [ac_cluster.auctions.close(a) for a in ids]
    for n, res in enumerate(results):
        w = res.winner("1")
        assert w is not None and w.bid_id == "y"
        assert res.imp("1").clearing_micros == to_micros(n + 1) + 10_000
        assert ac_cluster.auctions.bill(res.auction_id, "y", seat="sy").status == "billed"


def ac_cluster_create(aid: str) -> Call[Any]:
    from adcache.auctions import create_call

    return create_call(aid, [Imp("1", floor=1)], tmax_ms=60_000)


# ---- many bidders at once ----


def _reference(
    accepted: list[tuple[str, str, int, int]], floors: dict[str, int], inc: int
) -> dict[str, tuple[str, int]]:
    """Winner and clearing price per imp from (bid id, imp, price, seq) of every accepted bid."""
    out: dict[str, tuple[str, int]] = {}
    for imp in floors:
        mine = sorted((b for b in accepted if b[1] == imp), key=lambda b: (-b[2], b[3]))
        if not mine:
            continue
        win = mine[0]
        second = mine[1][2] if len(mine) > 1 else 0
        out[imp] = (win[0], min(win[2], max(second, floors[imp]) + inc))
    return out


@pytest.mark.parametrize("target", ["standalone", "cluster"])
def test_sixteen_concurrent_bidders(request: pytest.FixtureRequest, target: str, uid: str) -> None:
    lib = request.getfixturevalue("lib_standalone" if target == "standalone" else "lib_cluster")
    setup = AdCache(lib.client())
    auctions = [f"{uid}-{n}" for n in range(5)]
    floors = {"a": to_micros("1.00"), "b": 0}
    for a in auctions:
        setup.auctions.create(a, [Imp("a", floor="1.00"), Imp("b")], tmax_ms=120_000)
    prices = [Decimal("0.75") + Decimal("0.25") * k for k in range(10)]  # few values: many ties
    sent: dict[tuple[str, str], tuple[str, int]] = {}  # (auction, bid id) -> (imp, price)
    replies: list[tuple[str, Any]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(16)

    def bidder(t: int) -> None:
        rng = random.Random(t)
        cache = AdCache(lib.client())
        mine: list[tuple[str, Any]] = []
        try:
            start.wait()
            for n in range(24):
                a = auctions[rng.randrange(len(auctions))]
                imp = "a" if rng.random() < 0.6 else "b"
                bid = _bid(
                    f"t{t}-{n}", prices[rng.randrange(len(prices))], imp=imp, seat=f"seat{t}"
                )
                with lock:
                    sent[(a, bid.bid_id)] = (imp, to_micros(bid.price))
                if n % 6 == 5:  # a batch of two, the second a repeat of the first
                    for r in cache.auctions.bid_many(a, [bid, bid]):
                        mine.append((a, r))
                else:
                    mine.append((a, cache.auctions.bid(a, bid)))
                if n % 4 == 3:  # the bidder retries: idempotent
                    mine.append((a, cache.auctions.bid(a, bid)))
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)
        finally:
            cache.close()
            with lock:
                replies.extend(mine)

    threads = [threading.Thread(target=bidder, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    firsts = {(a, r.bid_id): r for a, r in replies if not r.duplicate}
    assert len(firsts) == len(sent), "every bid id got exactly one first reply"
    for a, r in replies:
        assert r.duplicate == (r is not firsts[(a, r.bid_id)])
        first = firsts[(a, r.bid_id)]
        assert (r.accepted, r.reason, r.seq) == (first.accepted, first.reason, first.seq)
    for a in auctions:
        res = setup.auctions.close(a)
        accepted = [
            (bid_id, *sent[(aa, bid_id)], r.seq)
            for (aa, bid_id), r in firsts.items()
            if aa == a and r.accepted
        ]
        ref = _reference(accepted, floors, 10_000)
        got = {
            i.imp_id: (i.winner.bid_id, i.clearing_micros) for i in res.imps if i.winner is not None
        }
        assert got == ref, a
        assert ref, "every auction got accepted bids"
        in_result = {b.bid_id for b in res.bids if b.status in ("won", "lost")}
        assert in_result == {b[0] for b in accepted}, "no accepted bid is lost"
        seqs = [b.seq for b in res.bids]
        assert len(set(seqs)) == len(seqs) == len([k for k in firsts if k[0] == a])
        for b in res.bids:
            if b.status == "rejected":
                assert b.reason == 100 and b.imp_id == "a" and b.price_micros < floors["a"]
    setup.close()


# ---- asyncio ----


async def test_async_twin(aacs: aio.AdCache, uid: str) -> None:
    await aacs.auctions.create(uid, [Imp("1", floor="1")], tmax_ms=60_000)
    r = await aacs.auctions.bid(uid, _bid("a", "2"))
    assert r.accepted
    many = await aacs.auctions.bid_many(uid, [_bid("b", "3", seat="s2"), _bid("a", "9")])
    assert [x.duplicate for x in many] == [False, True]
    open_ = await aacs.auctions.result(uid)
    assert open_ is not None and open_.state == "open"
    res = await aacs.auctions.close(uid)
    w = res.winner("1")
    assert w is not None and w.bid_id == "b" and res.imp("1").clearing_micros == to_micros("2.01")
    assert (await aacs.auctions.bill(uid, "b", seat="s2")).status == "billed"
    assert (await aacs.auctions.bill(uid, "b", seat="s2")).status == "already_billed"
    with pytest.raises(AlreadyExistsError):
        await aacs.auctions.create(uid, [Imp("1")])


def test_close_racing_bidders(ac: AdCache, lib_standalone: Any, uid: str) -> None:
    """Closes land while bids stream in: every bid accepted before a close counts, every later one
    is refused as expired, and the recorded winner matches the accepted bids."""
    auctions = [f"{uid}-{n}" for n in range(4)]
    for a in auctions:
        ac.auctions.create(a, [Imp("1")], tmax_ms=120_000)
    sent: dict[tuple[str, str], int] = {}
    firsts: dict[tuple[str, str], Any] = {}
    lock = threading.Lock()
    start = threading.Barrier(9)
    errors: list[BaseException] = []

    def bidder(t: int) -> None:
        rng = random.Random(100 + t)
        cache = AdCache(lib_standalone.client())
        try:
            start.wait()
            for n in range(40):
                a = auctions[n % len(auctions)]
                bid = _bid(f"t{t}-{n}", Decimal(rng.randrange(1, 9)) / 4, seat=f"s{t}")
                r = cache.auctions.bid(a, bid)
                with lock:
                    sent[(a, bid.bid_id)] = to_micros(bid.price)
                    firsts[(a, bid.bid_id)] = r
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)
        finally:
            cache.close()

    def closer() -> None:
        cache = AdCache(lib_standalone.client())
        try:
            start.wait()
            for a in auctions:
                time.sleep(0.01)
                cache.auctions.close(a)
        except BaseException as e:  # reported below, in the main thread
            errors.append(e)
        finally:
            cache.close()

    threads = [threading.Thread(target=bidder, args=(t,)) for t in range(8)]
    threads.append(threading.Thread(target=closer))
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for a in auctions:
        res = ac.auctions.close(a)
        accepted = [
            (b, "1", sent[(aa, b)], r.seq)
            for (aa, b), r in firsts.items()
            if aa == a and r.accepted
        ]
        refused = {b for (aa, b), r in firsts.items() if aa == a and not r.accepted}
        assert {b.bid_id for b in res.bids if b.status in ("won", "lost")} == {
            x[0] for x in accepted
        }
        assert {b.bid_id for b in res.bids if b.status == "rejected"} == refused
        assert all(firsts[(a, b)].reason == 2 for b in refused)
        # every refused bid arrived after every accepted one
        if accepted and refused:
            assert max(x[3] for x in accepted) < min(firsts[(a, b)].seq for b in refused)
        ref = _reference(accepted, {"1": 0}, 10_000)
        got = {
            i.imp_id: (i.winner.bid_id, i.clearing_micros) for i in res.imps if i.winner is not None
        }
        assert got == ref


def test_the_record_expires_whole(ac: AdCache, uid: str) -> None:
    ac.auctions.create(uid, [Imp("1")], tmax_ms=100, exp=0.1, ttl=0.3)
    ac.auctions.bid(uid, _bid("a", "1"))
    time.sleep(0.45)
    assert ac.redis.exists(keys.auction(uid), keys.auction_bids(uid)) == 0
    assert ac.auctions.result(uid) is None


async def test_async_result_settles_a_due_auction(aac: aio.AdCache, uid: str) -> None:
    import asyncio

    await aac.auctions.create(uid, [Imp("1")], tmax_ms=100)
    await aac.auctions.bid(uid, _bid("a", "1"))
    await asyncio.sleep(0.2)
    due = await aac.auctions.result(uid, settle=False)
    assert due is not None and due.state == "due"
    settled = await aac.auctions.result(uid)
    assert settled is not None and settled.state == "closed" and settled.closed_ms > 0
    w = settled.winner("1")
    assert w is not None and w.bid_id == "a"
