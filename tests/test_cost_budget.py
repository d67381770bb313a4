"""The cost guard: every hot-path function runs exactly the inner commands its budget allows.

Each function is called the way the cost ledger calls it (`benchmarks/cost_calls.py`), on
entities of this test's own, and its inner commands are counted from the server's
`INFO commandstats` before and after one steady-state call. Redis runs one command at a time and
the suite's tests run one after another, so the delta is exact, not a sample: the comparison with
`benchmarks/cost_budget.yaml` is an equality. A change that adds (or drops) a `redis.call` on a hot
path fails here until the budget says so on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from adcache import AdCache
from adcache import _generated as generated
from adcache_loader.servers import Standalone

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the benchmarks package

from benchmarks import cost_budget
from benchmarks.cost_calls import BY_NAME, HOT_CALLS, World, exact_inner, seed

UPDATE = (
    "If the change is intended, update the budget on purpose: run "
    "`python -m benchmarks.cost --write-budget` (or edit benchmarks/cost_budget.yaml), review the "
    "diff, and say in the commit why the hot path costs what it now costs."
)


@pytest.fixture(scope="module")
def budget() -> cost_budget.Budget:
    return cost_budget.load()


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _field(record: object, name: str) -> Any:
    """A field of a FUNCTION LIST record, as a flat list or a dict (by redis-py version)."""
    items = (
        record.items() if isinstance(record, dict) else zip(record[::2], record[1::2], strict=True)
    )  # type: ignore[index]
    return next(v for k, v in items if _text(k) == name)


def _fmt(commands: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(commands.items())) or "none"


@pytest.mark.parametrize("name", [h.name for h in HOT_CALLS])
def test_inner_commands_match_the_budget(
    lib_standalone: Standalone, uid: str, budget: cost_budget.Budget, name: str
) -> None:
    hc = BY_NAME[name]
    assert name in budget, f"{name} has no budget in {cost_budget.PATH.name}. {UPDATE}"
    r = lib_standalone.client()
    ac = AdCache(lib_standalone.client())
    try:
        world = World(r, uid, entities=1)
        seed(ac, world)
        got = exact_inner(r, world, hc)
    finally:
        ac.close()
        r.close()
    want = cost_budget.commands_of(budget, name)
    if got != want:
        more = {k: got.get(k, 0) - want.get(k, 0) for k in sorted(set(got) | set(want))}
        diff = ", ".join(f"{k} {d:+d}" for k, d in more.items() if d)
        pytest.fail(
            f"{hc.function} ({hc.label}) runs {sum(got.values())} inner commands per call "
            f"({_fmt(got)}); its budget is {sum(want.values())} ({_fmt(want)}). "
            f"Difference: {diff}. {UPDATE}",
            pytrace=False,
        )


def test_the_ledger_covers_every_budget_and_every_budget_a_ledger_call(
    budget: cost_budget.Budget,
) -> None:
    ledger = {h.name for h in HOT_CALLS}
    assert set(budget) - ledger == set(), "budgets for calls the ledger does not run"
    assert ledger - set(budget) == set(), f"ledger calls without a budget. {UPDATE}"
    for name, entry in budget.items():
        assert entry["function"] == BY_NAME[name].function, name


def test_every_budgeted_function_is_in_the_library(
    lib_standalone: Standalone, budget: cost_budget.Budget
) -> None:
    r = lib_standalone.client()
    try:
        libs = r.execute_command("FUNCTION", "LIST", "LIBRARYNAME", generated.LIBRARY_NAME)
    finally:
        r.close()
    loaded = {_text(_field(fn, "name")) for lib in libs for fn in _field(lib, "functions")}
    for name, entry in budget.items():
        assert entry["function"] in loaded, f"{name}: {entry['function']} is not in the library"
        assert entry["function"] in generated.FUNCTIONS, name


def test_a_foreign_call_during_the_count_is_detected(
    lib_standalone: Standalone, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The count refuses to guess: a function call from anyone else in its window is an error."""
    from benchmarks import cost_calls

    r = lib_standalone.client()
    other = lib_standalone.client()
    ac = AdCache(lib_standalone.client())
    try:
        world = World(r, uid, entities=1)
        seed(ac, world)
        hc = BY_NAME["session_get"]
        real = cost_calls.commandstats

        def noisy(client: redis.Redis) -> cost_calls.Stats:
            before = real(client)
            other.execute_command(*cost_calls.NOOP)
            return before

        monkeypatch.setattr(cost_calls, "commandstats", noisy)
        with pytest.raises(cost_calls.ForeignTraffic):
            exact_inner(r, world, hc)
    finally:
        ac.close()
        other.close()
        r.close()


def test_monitor_lines_are_parsed_back_to_the_exact_arguments() -> None:
    from benchmarks.cost_measure import parse_monitor_line

    line = r'1764456000.123456 [0 lua] "HSET" "ad:{u:x}:fc" "a \"b\"" "\x00\xff\\" ""'
    assert parse_monitor_line(line) == (
        "lua",
        (b"HSET", b"ad:{u:x}:fc", b'a "b"', b"\x00\xff\\", b""),
    )
    source, _ = parse_monitor_line('1764456000.1 [0 127.0.0.1:5000] "ECHO" "x"')
    assert source == "127.0.0.1:5000"
