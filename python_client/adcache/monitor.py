"""Monitoring a deployment (Lua domain `monitor` plus server INFO): health of every node, adcache's
own counters summed over the nodes, and a key-hygiene audit.

Health comes from `INFO` of every node (primaries and, on a cluster, the replicas the client
knows): the hit rate is keyspace_hits / (hits + misses) summed over the nodes, not one node's view.
Counters come from `ac_monitor_counters` on every node: each node keeps its own in its Lua state
(not replicated, reset when the library is reloaded or the server restarts), and the client sums
them. The audit walks each primary with SCAN (bounded COUNT, a cap on keys, never KEYS) and
reports adcache keys without a TTL, with a pattern the keyspace does not know, or of the wrong type.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from functools import cache
from typing import Any

from redis.exceptions import RedisError, ResponseError

from adcache import _generated as keys
from adcache._core import pairs, text, translate_error
from adcache._facade import Facade, M, Plan, do, plan
from adcache._generated import KEY_PREFIX

log = logging.getLogger("adcache.monitor")

# INFO sections health needs (several sections in one INFO needs Redis >= 7).
INFO_SECTIONS = ("server", "stats", "memory", "clients", "commandstats")


@dataclass(frozen=True, slots=True)
class CommandStat:
    calls: int
    usec: int


@dataclass(frozen=True, slots=True)
class NodeHealth:
    """One node's INFO figures (counters are since the server started or CONFIG RESETSTAT)."""

    node: str
    role: str
    up: bool
    used_memory: int = 0
    maxmemory: int = 0
    keyspace_hits: int = 0
    keyspace_misses: int = 0
    evicted_keys: int = 0
    expired_keys: int = 0
    connected_clients: int = 0
    ops_per_sec: int = 0
    commands_processed: int = 0
    # Script entry points from INFO commandstats: fcall, fcall_ro (Redis 7 counts FCALL as one
    # command; a server that reports per-function entries, `fcall|<name>`, shows them here too).
    functions: Mapping[str, CommandStat] = field(default_factory=dict)
    error: str | None = None

    @property
    def hit_rate(self) -> float | None:
        total = self.keyspace_hits + self.keyspace_misses
        return self.keyspace_hits / total if total else None


@dataclass(frozen=True, slots=True)
class Health:
    """Every node's figures and their sums (maxmemory 0 on a node means no limit there)."""

    nodes: tuple[NodeHealth, ...]

    def total(self, name: str) -> int:
        return sum(int(getattr(n, name)) for n in self.nodes if n.up)

    @property
    def hit_rate(self) -> float | None:
        """keyspace hits / (hits + misses), both summed over every node."""
        hits, misses = self.total("keyspace_hits"), self.total("keyspace_misses")
        return hits / (hits + misses) if hits + misses else None

    @property
    def functions(self) -> dict[str, CommandStat]:
        out: dict[str, CommandStat] = {}
        for n in self.nodes:
            for name, st in n.functions.items():
                prev = out.get(name, CommandStat(0, 0))
                out[name] = CommandStat(prev.calls + st.calls, prev.usec + st.usec)
        return out

    @property
    def nodes_up(self) -> int:
        return sum(1 for n in self.nodes if n.up)


@dataclass(frozen=True, slots=True)
class Counters:
    """adcache's own counters: per node and summed. A node whose library is missing or was just
    reloaded reports none (its counters restart from zero)."""

    per_node: Mapping[str, Mapping[str, int]]
    errors: Mapping[str, str] = field(default_factory=dict)

    @property
    def totals(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for counts in self.per_node.values():
            total.update(counts)
        return dict(sorted(total.items()))

    def get(self, name: str) -> int:
        return self.totals.get(name, 0)


@dataclass(frozen=True, slots=True)
class KeyPattern:
    name: str
    regex: re.Pattern[str]
    redis_type: str  # what TYPE answers for it
    expires: bool  # False when the keyspace gives the key an owner instead of a TTL


@dataclass(frozen=True, slots=True)
class AuditReport:
    """What a bounded SCAN saw. complete is False when max_keys stopped it before the end."""

    scanned: int
    complete: bool
    per_node: Mapping[str, int]
    by_pattern: Mapping[str, int]
    no_ttl: tuple[str, ...]
    unknown: tuple[str, ...]
    wrong_type: tuple[str, ...]
    owned_without_ttl: int = 0

    @property
    def ok(self) -> bool:
        return not (self.no_ttl or self.unknown or self.wrong_type)


# ---- parsing ----


def _int(info: Mapping[str, Any], name: str) -> int:
    try:
        return int(float(info.get(name, 0)))
    except (TypeError, ValueError):
        return 0


# NodeHealth's integer figures, each from the INFO field of its name unless named here.
_FIGURES = [f.name for f in fields(NodeHealth) if f.type == "int"]
_INFO_NAME = {
    "ops_per_sec": "instantaneous_ops_per_sec",
    "commands_processed": "total_commands_processed",
}


def parse_info(raw: Any) -> dict[str, Any]:
    """INFO as a dict, whether redis-py parsed it already or handed back the text."""
    if isinstance(raw, dict):
        return raw
    out: dict[str, Any] = {}
    for line in text(raw).splitlines():
        if not line or line.startswith("#") or ":" not in line:
            continue
        k, v = line.split(":", 1)
        if k.startswith("cmdstat_"):
            out[k] = dict(kv.split("=", 1) for kv in v.split(","))
        else:
            out[k] = v
    return out


def node_health(node: str, role: str, raw_info: Any) -> NodeHealth:
    info = parse_info(raw_info)
    functions: dict[str, CommandStat] = {}
    for k, v in info.items():
        name = k.removeprefix("cmdstat_")
        if k.startswith("cmdstat_") and name.startswith("fcall") and isinstance(v, dict):
            functions[name] = CommandStat(_int(v, "calls"), _int(v, "usec"))
    figures: dict[str, Any] = {a: _int(info, _INFO_NAME.get(a, a)) for a in _FIGURES}
    return NodeHealth(node, role, True, functions=functions, **figures)


def parse_counters(reply: Any) -> dict[str, int]:
    return {k: int(v) for k, v in pairs(reply).items()}


_REDIS_TYPE = {"hyperloglog": "string", "sortedset": "zset", "sorted set": "zset"}


@cache
def key_patterns() -> tuple[KeyPattern, ...]:
    """A regex per keyspace pattern, derived from lua/keyspace.yaml (never typed by hand)."""
    out = []
    for name, letter, suffix_spec, rtype, ttl in keys.KEYSPACE:
        parts = re.split(r"<\w+>", suffix_spec)
        suffix = "[^{}]+".join(re.escape(p) for p in parts)
        rx = re.compile(rf"^{re.escape(keys.KEY_PREFIX)}:\{{{letter}:[^{{}}]+\}}:{suffix}$")
        expires = not ttl.strip().lower().startswith(("none", "owner", "no ttl", "persistent"))
        kind = _REDIS_TYPE.get(rtype.lower(), rtype.lower())
        out.append(KeyPattern(name, rx, kind, expires))
    return tuple(out)


def classify(key: str) -> KeyPattern | None:
    for p in key_patterns():
        if p.regex.match(key):
            return p
    return None


class _AuditState:
    def __init__(self, max_report: int) -> None:
        self.max_report = max_report
        self.scanned = 0
        self.per_node: Counter[str] = Counter()
        self.by_pattern: Counter[str] = Counter()
        self.no_ttl: list[str] = []
        self.unknown: list[str] = []
        self.wrong_type: list[str] = []
        self.owned = 0
        self.complete = True

    def take(self, found: Any, max_keys: int) -> list[str]:
        keys = [text(k) for k in found]
        room = max(0, max_keys - self.scanned)
        if len(keys) > room:
            self.complete = False  # the cap cut this step short
        return keys[:room]

    def _note(self, bucket: list[str], key: str) -> None:
        if len(bucket) < self.max_report:
            bucket.append(key)

    def add(self, node: str, key: str, pttl: int, rtype: str) -> None:
        self.scanned += 1
        self.per_node[node] += 1
        if pttl == -2:
            return  # expired between SCAN and PTTL
        pat = classify(key)
        self.by_pattern["(unknown)" if pat is None else pat.name] += 1
        if pat is None:
            self._note(self.unknown, key)
        elif rtype != pat.redis_type:
            self._note(self.wrong_type, f"{key} ({rtype}, expected {pat.redis_type})")
        if pttl == -1:
            if pat is None or pat.expires:
                self._note(self.no_ttl, key)
            else:
                self.owned += 1

    def report(self) -> AuditReport:
        return AuditReport(
            scanned=self.scanned,
            complete=self.complete,
            per_node=dict(self.per_node),
            by_pattern=dict(sorted(self.by_pattern.items())),
            no_ttl=tuple(self.no_ttl),
            unknown=tuple(self.unknown),
            wrong_type=tuple(self.wrong_type),
            owned_without_ttl=self.owned,
        )


MATCH = f"{KEY_PREFIX}:*"


class Monitor(Facade[M]):
    """Health, counters and audit on the sync or asyncio `AdCache` (`cache.monitor`)."""

    @plan
    def health(self) -> Plan[Health]:
        out = []
        for ref in (yield from do(self._c.nodes)):
            try:
                raw = yield from do(self._c.execute_on, ref, "INFO", *INFO_SECTIONS)
                out.append(node_health(ref.name, ref.role, raw))
            except RedisError as e:
                log.warning("adcache monitor: INFO on %s failed: %s", ref.name, e)
                out.append(NodeHealth(node=ref.name, role=ref.role, up=False, error=str(e)))
        return Health(tuple(out))

    @plan
    def counters(self) -> Plan[Counters]:
        per: dict[str, dict[str, int]] = {}
        errors: dict[str, str] = {}
        for ref in (yield from do(self._c.nodes)):
            name = ref.name
            try:
                reply = yield from do(self._c.execute_on, ref, "FCALL_RO", "ac_monitor_counters", 0)
                per[name] = parse_counters(reply)
            except ResponseError as e:
                errors[name] = str(translate_error(e, name))
            except RedisError as e:
                errors[name] = str(e)
        return Counters(per, errors)

    @plan
    def audit(
        self, *, count: int = 200, max_keys: int = 100_000, max_report: int = 50
    ) -> Plan[AuditReport]:
        """SCAN every primary (COUNT `count` per step, at most `max_keys` keys in all)."""
        st = _AuditState(max_report)
        for ref in (yield from do(self._c.nodes, replicas=False)):
            if st.scanned >= max_keys:
                st.complete = False  # nodes left unscanned
                break
            cursor = 0
            while st.scanned < max_keys:
                scan = ("SCAN", cursor, "MATCH", MATCH, "COUNT", count)
                reply = yield from do(self._c.execute_on, ref, *scan)
                cursor = int(reply[0])
                batch = st.take(reply[1], max_keys)
                if batch:
                    cmds = [c for k in batch for c in (("PTTL", k), ("TYPE", k))]
                    res = yield from do(self._c.execute_many_on, ref, cmds)
                    for i, k in enumerate(batch):
                        st.add(ref.name, k, int(res[2 * i]), text(res[2 * i + 1]))
                if cursor == 0:
                    break
            st.complete = st.complete and cursor == 0  # else the node was only sampled
        return st.report()


AsyncMonitor = Monitor  # the same class: on an asyncio client its methods return awaitables
