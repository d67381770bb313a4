"""The committed budget of inner commands per call (`cost_budget.yaml`): read, measure, write.

The guard (`tests/test_cost_budget.py`) compares each hot call's exact inner commands with this
file; `python -m benchmarks.cost --write-budget` measures them the same way and rewrites it.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import redis
import yaml

from adcache import AdCache
from benchmarks.cost_calls import HOT_CALLS, HotCall, World, exact_inner, seed

PATH = Path(__file__).with_name("cost_budget.yaml")
HEADER = """\
# Inner Redis commands per call of each hot-path function, in its steady state: the budget the
# guard (tests/test_cost_budget.py) holds every function to, exactly. The calls themselves are
# defined in benchmarks/cost_calls.py (the cost ledger runs the same ones).
#
# A change that adds or removes a command on a hot path fails the guard until this file says so.
# Regenerate it from the library as it is now (then review the diff and say why in the commit):
#     python -m benchmarks.cost --write-budget
"""

Budget = dict[str, dict[str, Any]]  # name -> {"function": str, "commands": {kind: count}}


def load(path: Path = PATH) -> Budget:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of hot call -> budget")
    return data


def commands_of(budget: Budget, name: str) -> dict[str, int]:
    return {str(k): int(v) for k, v in (budget[name].get("commands") or {}).items()}


def measure_one(r: redis.Redis, ac: AdCache, hc: HotCall) -> dict[str, int]:
    """Exact inner commands of one steady-state call of `hc`, on entities of its own."""
    world = World(r, f"b{uuid.uuid4().hex[:10]}", entities=1)
    seed(ac, world)
    return exact_inner(r, world, hc)


def measure(url: str) -> Budget:
    r = redis.Redis.from_url(url)
    ac = AdCache(redis.Redis.from_url(url))
    try:
        return {
            hc.name: {"function": hc.function, "commands": measure_one(r, ac, hc)}
            for hc in HOT_CALLS
        }
    finally:
        ac.close()
        r.close()


def write(budget: Budget, path: Path = PATH) -> None:
    body = yaml.safe_dump(budget, sort_keys=False, default_flow_style=None, width=100)
    path.write_text(HEADER + "\n" + body)
