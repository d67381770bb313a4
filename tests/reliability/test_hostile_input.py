"""Every public function, sent random and hostile arguments and keys, either succeeds or answers a
typed adcache error and changes no key. A raw Lua error (a missing validation) fails the test.

Generic over the generated function table: each domain is covered as soon as it exists.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adcache import AdCache, AdCacheError, Call
from adcache import _generated as g
from adcache._core import raw

FUNCS = sorted(n for n in g.FUNCTIONS if n != "ac_version")
EXAMPLES = int(os.environ.get("ADCACHE_HOSTILE_EXAMPLES", "600"))

hostile = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.integers(min_value=-5, max_value=5000).map(str),
    st.sampled_from(
        [
            "",
            " ",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "1e9",
            "0x10",
            "1.5",
            "-0",
            "+1",
            "{",
            "}",
            "{x}",
            "a:b",
            "minute",
            "hour",
            "day",
            "week",
            "month",
            "rolling",
            "lifetime",
            "campaign",
            "advertiser",
            "creative",
            "1",
            "2",
            "0",
            "-1",
            "9" * 16,
            "9" * 40,
            "true",
            "null",
            "[]",
            "{}",
            "\x00",
            "é",
        ]
    ),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.just("x" * 5000),
)
ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)


def _build(key_name: str, entity_id: str, params: list[str]) -> str:
    builder = getattr(g, key_name)
    n_params = builder.__code__.co_argcount - 1
    return str(builder(entity_id, *params[:n_params], *["p"] * max(0, n_params - len(params))))


@st.composite
def keys_for(draw: st.DrawFn, name: str, tag_id: str) -> tuple[str, ...]:
    spec = g.FUNCTIONS[name]
    names = [k.rstrip(".") for k in spec.keys]
    variadic = bool(spec.keys) and spec.keys[-1].endswith("...")
    params = draw(
        st.lists(st.sampled_from(["20261126", "2026112610", "0", "sports", "x", "1"]), max_size=2)
    )
    out = [_build(k, tag_id, params) for k in names]
    if variadic:
        out += [
            _build(names[-1], tag_id, [p])
            for p in draw(st.lists(st.sampled_from(["20261125", "7", "y"]), max_size=3))
        ]
    mutation = draw(
        st.sampled_from(["none"] * 6 + ["drop", "extra", "other_tag", "garbage", "braces"])
    )
    if mutation == "drop" and out:
        out.pop(draw(st.integers(0, len(out) - 1)))
    elif mutation == "extra":
        out.append(out[0] if out else "ad:{u:x}:y")
    elif mutation == "other_tag" and out:
        i = draw(st.integers(0, len(out) - 1))
        out[i] = out[i].replace(tag_id, tag_id + "-other")
    elif mutation == "garbage" and out:
        out[draw(st.integers(0, len(out) - 1))] = draw(
            st.sampled_from(["", "ad:", "ad:{}:x", "x", "ad:{u:}:profile"])
        )
    elif mutation == "braces" and out:
        out[0] = out[0].replace(tag_id, tag_id + "}{")
    return tuple(out)


def _snapshot(r: Any, tag_id: str) -> dict[bytes, bytes | None]:
    """Every key of the test's ids and its DUMP (on a cluster: scanned on every primary)."""
    found: dict[bytes, bytes | None] = {}
    for k in r.scan_iter(match=f"*{tag_id}*", count=1000):
        found[k] = r.dump(k)
    return found


@pytest.mark.skipif(not FUNCS, reason="no functions")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_calls_fail_typed_and_change_nothing(ac: AdCache, uid: str, data: Any) -> None:
    _hostile_call(ac, uid, data)


@pytest.mark.skipif(not FUNCS, reason="no functions")
@settings(
    max_examples=max(50, EXAMPLES // 4),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_hostile_calls_on_a_cluster(ac_cluster: AdCache, uid: str, data: Any) -> None:
    """On a cluster, keys of several slots are refused by Redis before the function runs: the
    client maps that to CrossSlotError too."""
    _hostile_call(ac_cluster, uid, data)


def _hostile_call(ac: AdCache, uid: str, data: Any) -> None:
    name = data.draw(st.sampled_from(FUNCS), label="function")
    tag_id = f"{uid}{data.draw(ids, label='id')}"
    keys = data.draw(keys_for(name, tag_id), label="keys")
    args = data.draw(st.lists(hostile, max_size=14), label="args")
    r = ac.redis
    before = _snapshot(r, tag_id)
    try:
        ac.run(Call(name, keys, tuple(args), raw))
    except AdCacheError:
        assert _snapshot(r, tag_id) == before, f"{name} failed but changed keys"
    except redis.ResponseError as e:  # anything else is a validation the function is missing
        pytest.fail(f"{name}{keys}{args!r} answered an untyped error: {e}")
