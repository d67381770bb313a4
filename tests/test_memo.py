"""The library's parse-once memos (lua/_memo.lua.j2) are emptied whole once they hold their
bound: calls that push them past it, and the calls after, still answer exactly."""

from __future__ import annotations

from typing import TypeVar

import pytest

from adcache import AdCache, BadKeyError, Call
from adcache._core import raw
from adcache.caps import Candidate, CapRule, check_call
from adcache.sessions import get_call

T = TypeVar("T")


def _run(ac: AdCache, calls: list[Call[T]]) -> list[T]:
    out: list[T] = []
    for at in range(0, len(calls), 500):
        out += ac.run_many(calls[at : at + 500])
    return out


def test_the_caps_memo_past_its_bound(ac: AdCache, uid: str) -> None:
    """4,200 windows never seen before: more than the 4,096 entries the memo holds."""
    user = f"{uid}-u"
    cands = [Candidate("c", (CapRule.rolling("campaign", 100_000 + i, 5),)) for i in range(4200)]
    decisions = [d for ds in _run(ac, [check_call(user, [c]) for c in cands]) for d in ds]
    assert len(decisions) == 4200 and all(d.allowed and d.remaining == 5 for d in decisions)
    rule = CapRule.rolling("campaign", 60, 2)
    ac.caps.record(user, f"{uid}-i1", Candidate("c", (rule,)))
    [after] = ac.caps.check(user, [Candidate("c", (rule,))])
    assert after.allowed and after.remaining == 1


def test_the_key_memo_past_its_bound(ac: AdCache, uid: str) -> None:
    """8,300 keys never seen before: more than the 8,192 the memo of checked keys holds."""
    ac.sessions.create(f"{uid}-kept", "u", idle_ttl=60, max_lifetime=60, index=False)
    assert _run(ac, [get_call(f"{uid}-s{i}") for i in range(8300)]) == [None] * 8300
    with pytest.raises(BadKeyError):
        ac.run(Call("ac_session_get", (f"ad:{{u:{uid}}}:sess",), (), raw))
    got = ac.sessions.get(f"{uid}-kept")
    assert got is not None and got.user_id == "u"
