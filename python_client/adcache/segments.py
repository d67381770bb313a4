"""Audience segments: memberships with their own expiry, on the user side and the segment side
(Lua domain `segment`).

The user side (`{u:<id>}`) is what targeting reads; the segment side (`{g:<id>}`) lists a segment's
users, newest first. A membership change is two single-tag calls composed here:

* add: segment side first (it returns the expiry), then the user side with that same expiry;
* remove: user side first, then the segment side.

So the segment side always lists every membership the user side holds. A crash between the two
calls leaves at most a segment-side entry the user side lacks: targeting never sees it, paging
shows it until the retry (both calls are idempotent: a repeat sets the same state) or its expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adcache import _generated as keys
from adcache._core import Call, ints, positive_ms, text
from adcache._facade import Facade, M, Plan, forward, one, plan
from adcache._generated import AdCacheError

DEFAULT_MAX_MEMBERS = 1_000_000
DEFAULT_MAX_SEGMENTS = 256


@dataclass(frozen=True, slots=True)
class Membership:
    segment_id: str
    expires_at_ms: int
    new: bool = False


@dataclass(frozen=True, slots=True)
class Member:
    user_id: str
    added_ms: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class MemberPage:
    members: list[Member]
    next_cursor: str  # '' after the last page

    @property
    def done(self) -> bool:
        return self.next_cursor == ""


@dataclass(frozen=True, slots=True)
class SegmentAdd:
    expires_at_ms: int
    new: bool
    members: int


def _seg_keys(segment_id: str) -> tuple[str, str]:
    return keys.segment_members(segment_id), keys.segment_expiry(segment_id)


# ---- segment side ({g:<id>}) ----


def add_call(
    segment_id: str, user_id: str, *, ttl: float, max_members: int = DEFAULT_MAX_MEMBERS
) -> Call[SegmentAdd]:
    def parse(reply: Any) -> SegmentAdd:
        exp, new, n = ints(reply)
        return SegmentAdd(exp, new == 1, n)

    args = (user_id, positive_ms(ttl, "ttl"), int(max_members))
    return Call("ac_segment_add", _seg_keys(segment_id), args, parse)


def remove_call(segment_id: str, user_id: str) -> Call[bool]:
    return Call("ac_segment_remove", _seg_keys(segment_id), (user_id,), lambda r: int(r) == 1)


def members_call(segment_id: str, cursor: str = "", count: int = 100) -> Call[MemberPage]:
    """A page of live members, newest first; pass `next_cursor` on until it is ''. A page
    may be shorter than `count` when expired members were skipped."""

    def parse(reply: Any) -> MemberPage:
        nxt, rest = text(reply[0]), reply[1:]
        members = [
            Member(text(rest[i]), int(rest[i + 1]), int(rest[i + 2]))
            for i in range(0, len(rest), 3)
        ]
        return MemberPage(members, nxt)

    return Call("ac_segment_members", _seg_keys(segment_id), (cursor, int(count)), parse)


# ---- user side ({u:<id>}) ----


def join_call(
    user_id: str, segment_id: str, expires_at_ms: int, *, max_segments: int = DEFAULT_MAX_SEGMENTS
) -> Call[int]:
    """Reply: 1 new, 0 refreshed, -1 already expired (nothing written)."""
    args = (segment_id, int(expires_at_ms), int(max_segments))
    return Call("ac_segment_join", (keys.user_segments(user_id),), args, lambda r: int(r[0]))


def leave_call(user_id: str, segment_id: str) -> Call[bool]:
    return Call(
        "ac_segment_leave", (keys.user_segments(user_id),), (segment_id,), lambda r: int(r) == 1
    )


def of_call(user_id: str) -> Call[list[Membership]]:
    """The user's live memberships, soonest expiry first (FCALL_RO)."""

    def parse(reply: Any) -> list[Membership]:
        it = iter(reply or [])
        return [Membership(text(s), int(float(text(e)))) for s, e in zip(it, it, strict=True)]

    return Call("ac_segment_of", (keys.user_segments(user_id),), (), parse)


class Segments(Facade[M]):
    """Segment calls on the sync or asyncio `AdCache` (`cache.segments`)."""

    of = forward(of_call)
    members = forward(members_call)

    @plan
    def add(
        self,
        user_id: str,
        segment_id: str,
        *,
        ttl: float,
        max_members: int = DEFAULT_MAX_MEMBERS,
        max_segments: int = DEFAULT_MAX_SEGMENTS,
    ) -> Plan[Membership]:
        """Add (or refresh) a membership expiring `ttl` seconds from now. LimitExceededError when
        the segment or the user is full; then nothing is left on either side."""
        seg = yield from one(add_call(segment_id, user_id, ttl=ttl, max_members=max_members))
        try:
            yield from one(
                join_call(user_id, segment_id, seg.expires_at_ms, max_segments=max_segments)
            )
        except AdCacheError:
            if seg.new:  # undo the segment side we just wrote; the user side refused
                yield from one(remove_call(segment_id, user_id))
            raise
        return Membership(segment_id, seg.expires_at_ms, seg.new)

    @plan
    def remove(self, user_id: str, segment_id: str) -> Plan[bool]:
        """End a membership (idempotent). True when the user side held it live."""
        had = yield from one(leave_call(user_id, segment_id))
        yield from one(remove_call(segment_id, user_id))
        return had


AsyncSegments = Segments  # the same class: on an asyncio client its methods return awaitables
