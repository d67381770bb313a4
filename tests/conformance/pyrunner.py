"""The Python runner of the conformance cases: raw FCALL / FCALL_RO through redis-py.

The case format is described in tests/conformance/README.md; node/runner.js implements the same
rules. This module only uses redis-py's `execute_command`, never the adcache client, so it checks
the contracts as any other client would see them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import yaml
from redis.cluster import RedisCluster

HERE = Path(__file__).resolve().parent
CASES_DIR = HERE / "cases"
CONTRACTS = HERE.parent.parent / "functions" / "adcache.contracts.json"
_VAR = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*(?:([+-])\s*(\d+))?\s*\}\}")
# Raw commands a case may send besides FCALL: state checks, and setup of foreign data.
READ_COMMANDS = {"EXISTS", "PTTL", "TTL", "HGET", "HLEN", "TYPE", "ZCARD", "ZSCORE", "LLEN",
                 "SCARD", "XLEN", "GET", "HEXISTS", "PFCOUNT", "SISMEMBER"}  # fmt: skip
SETUP_COMMANDS = {
    "SET",
    "HSET",
    "RPUSH",
    "SADD",
    "ZADD",
    "PEXPIRE",
    "DEL",
    "XADD",
    "XGROUP",
    "XREADGROUP",
}


def contracts() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(CONTRACTS.read_text())
    return data


@dataclass
class Case:
    """One expanded case: a name, the functions it covers and its steps."""

    name: str
    file: str
    steps: list[dict[str, Any]]
    covers: dict[str, set[str]] = field(default_factory=dict)  # function -> codes ("ok" or error)


def _variant(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    call = {
        "call": base["call"],
        "keys": list(base.get("keys", [])),
        "args": list(base.get("args", [])),
    }
    if "keys" in change:
        call["keys"] = list(change["keys"])
    if "args" in change:
        call["args"] = list(change["args"])
    for i, v in (change.get("set_key") or {}).items():
        call["keys"][int(i)] = v
    for i, v in (change.get("set_arg") or {}).items():
        call["args"][int(i)] = v
    call["args"] += list(change.get("more_args", []))
    for what in ("keys", "args"):  # fill_keys / fill_args: [n, [pattern, ...]], %i = 0..n-1
        fill = change.get(f"fill_{what}")
        if fill:
            call[what] += [p.replace("%i", str(i)) for i in range(int(fill[0])) for p in fill[1]]
    return call


def load_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case of every file, with the per-function tables expanded (happy path + errors)."""
    out: list[Case] = []
    for path in sorted(directory.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        _no_bools(path.name, doc)
        file_vars = doc.get("vars", {})
        for fn in doc.get("functions", []):
            base = {"call": fn["fn"], "keys": fn.get("keys", []), "args": fn.get("args", [])}
            setup = list(fn.get("setup", []))
            ok = {**base, "expect": fn.get("ok", {})}
            out.append(
                Case(
                    name=f"{fn['fn']}: ok",
                    file=path.name,
                    steps=[{"vars": {**file_vars, **fn.get("vars", {})}}, *setup, ok,
                           *fn.get("after", [])],
                    covers={fn["fn"]: {"ok"}},
                )
            )  # fmt: skip
            for code, changes in (fn.get("errors") or {}).items():
                for n, change in enumerate(changes if isinstance(changes, list) else [changes]):
                    steps: list[dict[str, Any]] = [{"vars": {**file_vars, **fn.get("vars", {})}}]
                    if not change.get("no_setup"):
                        steps += setup
                    if "wrongtype" in change:  # a key of the call holding a foreign value
                        key = change["wrongtype"]
                        steps += [
                            {"redis": ["DEL", key]},
                            {"redis": ["SET", key, "junk", "PX", "60000"]},
                        ]
                    steps += list(change.get("steps", []))
                    # `also`: a code the library answers today besides the documented one (a
                    # divergence to fix in the library or its header; listed in the report)
                    want = [code, *([change["also"]] if "also" in change else [])]
                    call = {**_variant(base, change), "expect": {"error": want}}
                    steps.append(call)
                    steps += list(change.get("after", []))
                    suffix = f" #{n + 1}" if n else ""
                    out.append(
                        Case(f"{fn['fn']}: {code}{suffix}", path.name, steps, {fn["fn"]: {code}})
                    )
        for case in doc.get("cases", []):
            steps = [{"vars": {**file_vars, **case.get("vars", {})}}, *case["steps"]]
            covers: dict[str, set[str]] = {}
            for s in case["steps"]:
                if "call" in s:
                    err = (s.get("expect") or {}).get("error")
                    covers.setdefault(s["call"], set()).add(err if isinstance(err, str) else "ok")
            out.append(Case(case["name"], path.name, steps, covers))
    return out


def _no_bools(where: str, value: Any) -> None:
    """YAML 1.1 (PyYAML) reads on/off/yes/no as booleans, YAML 1.2 (js-yaml) as strings: cases
    quote such words, and use 0/1 for flags, so both runners read the same data."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: a boolean in a case file; quote the word or use 0/1")
    if isinstance(value, list):
        for v in value:
            _no_bools(where, v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _no_bools(where, k)
            _no_bools(where, v)


class Mismatch(AssertionError):
    pass


class Runner:
    """Runs cases against a standalone server (redis.Redis) or a cluster (RedisCluster)."""

    def __init__(self, client: redis.Redis | RedisCluster, uid: str) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.uid = uid
        self.functions: dict[str, Any] = contracts()["functions"]

    # ---- substitution ----

    def _sub(self, value: Any, env: dict[str, Any]) -> Any:
        if isinstance(value, list):
            return [self._sub(v, env) for v in value]
        if isinstance(value, dict):
            return {k: self._sub(v, env) for k, v in value.items()}
        if not isinstance(value, str):
            return value
        for _ in range(5):
            new = _VAR.sub(lambda m: self._var(m, env), value)
            if new == value:
                break
            value = new
        return value

    @staticmethod
    def _var(m: re.Match[str], env: dict[str, Any]) -> str:
        name, sign, n = m.group(1), m.group(2), m.group(3)
        if name not in env:
            raise Mismatch(f"unknown variable {{{{{name}}}}}")
        v = env[name]
        if sign:
            v = int(v) + (int(n) if sign == "+" else -int(n))
        return str(v)

    # ---- transport ----

    def _send(self, command: str, keys: list[str], args: list[str], route: str | None) -> Any:
        parts = [command, *keys, *args]
        if not self.cluster:
            return self.client.execute_command(*parts)  # type: ignore[no-untyped-call]
        rc = self.client
        assert isinstance(rc, RedisCluster)
        node = rc.get_node_from_key(route) if route else rc.get_random_node()
        return rc.execute_command(*parts, target_nodes=node)

    def server_ms(self) -> int:
        if self.cluster:
            rc = self.client
            assert isinstance(rc, RedisCluster)
            sec, usec = rc.execute_command("TIME", target_nodes=rc.get_random_node())
        else:
            sec, usec = self.client.execute_command("TIME")  # type: ignore[no-untyped-call]
        return int(sec) * 1000 + int(usec) // 1000

    def call(self, name: str, keys: list[str], args: list[str]) -> tuple[Any, str | None]:
        """(reply, None) or (None, error code). The code is the first word of the error."""
        spec = self.functions.get(name)
        command = spec["command"] if spec else "FCALL"
        try:
            reply = self._send(
                command, [name, str(len(keys)), *keys], args, keys[0] if keys else None
            )
        except redis.exceptions.ResponseError as e:
            return None, error_code(e)
        return decode(reply), None

    def raw(self, parts: list[str]) -> tuple[Any, str | None]:
        cmd = parts[0].upper()
        if cmd not in READ_COMMANDS | SETUP_COMMANDS:
            raise Mismatch(f"command {cmd} is not allowed in cases")
        try:
            key = route_key(parts)
            reply = self._send(cmd, [], parts[1:], key)
        except redis.exceptions.ResponseError as e:
            return None, error_code(e)
        return decode(reply), None

    # ---- running ----

    def run(self, case: Case) -> None:
        env: dict[str, Any] = {"uid": self.uid, "now": self.server_ms()}
        for i, step in enumerate(case.steps):
            where = f"{case.name} [{case.file}] step {i}"
            if "vars" in step:
                env.update(step["vars"])
                continue
            step = self._sub(step, env)
            if "call" in step and not (step.get("expect") or {}).get("error"):
                # a call expected to succeed must fit its typed contract
                problems = check_args(step["call"], [str(a) for a in step.get("args", [])])
                if problems:
                    raise Mismatch(f"{where}: the arguments break the contract: {problems}")
            if "call" in step:
                reply, err = self.call(step["call"], [str(k) for k in step.get("keys", [])],
                                       [str(a) for a in step.get("args", [])])  # fmt: skip
            elif "redis" in step:
                reply, err = self.raw([str(p) for p in step["redis"]])
            else:
                raise Mismatch(f"{where}: a step needs call, redis or vars")
            check(where, step.get("expect") or {}, reply, err, env, self.cluster)
            for var, sel in (step.get("save") or {}).items():
                env[var] = select(reply, sel)


def route_key(parts: list[str]) -> str | None:
    """The key a raw command routes by: XGROUP CREATE <key>, XREADGROUP ... STREAMS <key>, else
    the first argument."""
    cmd = parts[0].upper()
    if cmd == "XGROUP":
        return parts[2]
    if cmd == "XREADGROUP":
        return parts[[p.upper() for p in parts].index("STREAMS") + 1]
    return parts[1] if len(parts) > 1 else None


def error_code(e: Exception) -> str:
    if isinstance(e, redis.exceptions.ClusterCrossSlotError):
        return "CROSSSLOT"
    msg = str(e)
    return msg.split(" ", 1)[0] if msg else "ERR"


def decode(v: Any) -> Any:
    if isinstance(v, bool):  # redis-py turns some integer replies (HEXISTS...) into bools
        return int(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, list):
        return [decode(x) for x in v]
    return v


def as_map(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, list) or len(reply) % 2:
        raise Mismatch(f"expected a field/value array, got {reply!r:.200}")
    return {str(reply[i]): reply[i + 1] for i in range(0, len(reply), 2)}


def select(reply: Any, sel: Any) -> Any:
    if sel == ".":
        return reply
    if isinstance(sel, int):
        return reply[sel]
    return as_map(reply)[sel]


_PLACEHOLDERS: dict[str, Callable[[Any, dict[str, Any]], bool]] = {
    "$any": lambda v, env: True,
    "$int": lambda v, env: isinstance(v, int),
    "$str": lambda v, env: isinstance(v, str),
    "$id": lambda v, env: isinstance(v, str) and v != "",
    "$time": lambda v, env: isinstance(v, int) and abs(v - int(env["now"])) < 86_400_000 * 400,
    "$array": lambda v, env: isinstance(v, list),
    "$dec": lambda v, env: isinstance(v, str) and re.fullmatch(r"-?\d+", v) is not None,
}


def match(expected: Any, actual: Any, env: dict[str, Any]) -> bool:
    if isinstance(expected, str) and expected in _PLACEHOLDERS:
        return _PLACEHOLDERS[expected](actual, env)
    if isinstance(expected, str) and expected.startswith("$int:"):  # $int:lo..hi
        lo, _, hi = expected[5:].partition("..")
        return (
            isinstance(actual, int)
            and (not lo or actual >= int(lo))
            and (not hi or actual <= int(hi))
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(match(e, a, env) for e, a in zip(expected, actual, strict=True))
        )
    if expected is None:
        return actual is None
    # RESP types are part of the contract: an integer reply is not a bulk string of digits.
    return type(expected) is type(actual) and expected == actual


def check(
    where: str,
    expect: dict[str, Any],
    reply: Any,
    err: str | None,
    env: dict[str, Any],
    cluster: bool,
) -> None:
    want_err = expect.get("error")
    if want_err is not None:
        codes = [want_err] if isinstance(want_err, str) else list(want_err)
        if cluster and "ADCACHE_CROSSSLOT" in codes:
            codes.append("CROSSSLOT")  # a cluster refuses keys of two slots before the call runs
        if err not in codes:
            raise Mismatch(f"{where}: expected error {codes}, got {err or 'reply'} {reply!r:.300}")
        return
    if err is not None:
        raise Mismatch(f"{where}: unexpected error {err}")
    if "reply" in expect and not match(expect["reply"], reply, env):
        raise Mismatch(f"{where}: expected {expect['reply']!r}, got {reply!r:.500}")
    if "map" in expect:
        got = as_map(reply)
        for k, v in expect["map"].items():
            if k not in got or not match(v, got[k], env):
                raise Mismatch(
                    f"{where}: field {k}: expected {v!r}, got {got.get(k, '<absent>')!r}"
                )
    if "len" in expect and (not isinstance(reply, list) or len(reply) != int(expect["len"])):
        raise Mismatch(f"{where}: expected {expect['len']} entries, got {reply!r:.300}")
    if "between" in expect:
        lo, hi = (int(x) for x in expect["between"])
        if not isinstance(reply, int) or not lo <= reply <= hi:
            raise Mismatch(f"{where}: expected an integer in [{lo}, {hi}], got {reply!r}")


# ---- the typed contracts as a checker of argument lists ----

_INT = re.compile(r"-?\d+")


def _value_errors(spec: dict[str, Any], v: str) -> str | None:
    t, name = spec["type"], spec["name"]
    if t in ("int", "uint", "count"):
        if not _INT.fullmatch(v):
            return f"{name} must be an integer, got {v!r}"
        n = int(v)
        if ("min" in spec and n < spec["min"]) or ("max" in spec and n > spec["max"]):
            return f"{name} must be in {spec.get('min', '')}..{spec.get('max', '')}, got {n}"
    elif t == "bool" and v not in ("0", "1"):
        return f"{name} must be 0 or 1, got {v!r}"
    elif t == "enum" and v not in spec["values"]:
        return f"{name} must be one of {spec['values']}, got {v!r}"
    elif (
        t == "id"
        and not (v == "" and spec.get("empty"))
        and (not v or "{" in v or "}" in v or len(v.encode()) > 128)
    ):
        return f"{name} must be an id (1 to 128 bytes, no braces), got {v!r:.40}"
    if "max_bytes" in spec and len(v.encode()) > spec["max_bytes"]:
        return f"{name} is longer than {spec['max_bytes']} bytes"
    return None


def _min_len(items: list[dict[str, Any]]) -> int:
    return sum(1 for i in items if "group" not in i)


def _first(item: dict[str, Any]) -> str:
    return str(item["name"]) if "group" not in item else _first(item["group"][0])


def check_args(function: str, args: list[str]) -> list[str]:
    """Where `args` do not fit the typed contract of `function` (empty when they do)."""
    tree: list[dict[str, Any]] = contracts()["functions"][function]["args"]
    errors: list[str] = []
    counts: dict[str, int] = {}

    def seq(items: list[dict[str, Any]], pos: int, end: int) -> int:
        for k, item in enumerate(items):
            rest = _min_len(items[k + 1 :])
            if "group" not in item:
                n = counts.pop(item["name"], None) if item["repeat"] else 1
                if n is None:  # name...: one or more, as many as the rest leaves
                    n = max(1, end - pos - rest)
                for _ in range(n):
                    if pos >= end:
                        errors.append(f"{item['name']} is missing")
                        return pos
                    err = _value_errors(item, args[pos])
                    if err:
                        errors.append(err)
                    elif item["type"] == "count":
                        counts[item["of"]] = int(args[pos])
                    pos += 1
                continue
            width = _min_len(item["group"])
            fixed = counts.pop(_first(item), None) if item["repeat"] else None
            if fixed is not None:
                for _ in range(fixed):
                    pos = seq(item["group"], pos, end)
            elif item["repeat"]:
                while end - pos - rest >= max(width, 1):
                    pos = seq(item["group"], pos, end)
            elif end - pos - rest > 0:
                pos = seq(item["group"], pos, end)
        return pos

    used = seq(tree, 0, len(args))
    if used < len(args) and not errors:
        errors.append(f"{len(args) - used} argument(s) beyond the contract")
    return errors
