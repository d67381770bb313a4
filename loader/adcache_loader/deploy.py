"""Deploy the library to a standalone server or to every primary of a cluster, and check it.

Nodes are found with CLUSTER NODES on the seed, not from the slot map: a primary that owns no slots
yet (just added by hand) is listed there and gets the library too, so it is ready when slots move.
Replicas receive functions by replication; `verify` still reads `ac_version` on each of them.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.exceptions import ResponseError

from adcache._core import str_pairs, text
from adcache_loader.paths import library_source
from adcache_loader.render import source_sha256

log = logging.getLogger("adcache.loader")


@dataclass(frozen=True)
class Node:
    name: str  # host:port
    role: str  # "primary" | "replica"
    client: redis.Redis


@dataclass(frozen=True)
class NodeStatus:
    node: str
    role: str
    state: str  # "ok" | "stale" | "missing" | "error"
    version: str = ""
    sha256: str = ""
    detail: str = ""

    @property
    def in_sync(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class Expected:
    version: str
    sha256: str  # what the source declares (ac_version answers it)
    code_sha256: str  # hash of the source text itself

    @classmethod
    def of(cls, source: str) -> Expected:
        m = re.search(r"local LIBRARY_VERSION = '([^']+)'", source)
        return cls(
            version=m.group(1) if m else "?",
            sha256=source_sha256(source),
            code_sha256=hashlib.sha256(source.encode()).hexdigest(),
        )


def _client_like(seed: redis.Redis, host: str, port: int) -> redis.Redis:
    """A client for another node with the seed's credentials and TLS settings."""
    pool = seed.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs.update(host=host, port=port)
    return redis.Redis(
        connection_pool=redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    )


def is_cluster(seed: redis.Redis) -> bool:
    return str(seed.info("cluster").get("cluster_enabled", 0)) == "1"


def _parse_cluster_nodes(text: str) -> list[tuple[str, int, str]]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr, flags = parts[1], parts[2].split(",")
        if {"fail", "handshake", "noaddr"} & set(flags):
            continue
        hostport = addr.split("@")[0]
        host, _, port = hostport.rpartition(":")
        role = "primary" if "master" in flags else "replica"
        out.append((host, int(port), role))
    return out


@contextmanager
def nodes(url: str, cluster: bool | None = None) -> Iterator[list[Node]]:
    """Every reachable node behind `url` (the seed alone when standalone)."""
    seed = redis.Redis.from_url(url)
    opened: list[redis.Redis] = [seed]
    try:
        if cluster is None:
            cluster = is_cluster(seed)
        if not cluster:
            kw = seed.connection_pool.connection_kwargs
            yield [Node(f"{kw.get('host')}:{kw.get('port')}", "primary", seed)]
            return
        raw = seed.execute_command("CLUSTER", "NODES")
        listing = text(raw)
        found = []
        for host, port, seen_as in _parse_cluster_nodes(listing):
            c = _client_like(seed, host, port)
            opened.append(c)
            # Each node's own ROLE: the seed's view lags while gossip spreads (a node just made a
            # replica can still be listed as a master there, and loading on it would fail).
            try:
                role = "primary" if text(c.execute_command("ROLE")[0]) == "master" else "replica"
            except redis.RedisError:
                role = seen_as
            found.append(Node(f"{host}:{port}", role, c))
        found.sort(key=lambda n: (n.role != "primary", n.name))
        yield found
    finally:
        for c in opened:
            c.close()


def node_status(node: Node, expected: Expected) -> NodeStatus:
    try:
        reply = node.client.execute_command("FCALL_RO", "ac_version", 0)
    except ResponseError as e:
        if "not found" in str(e).lower():
            return NodeStatus(node.name, node.role, "missing", detail="no adcache library")
        return NodeStatus(node.name, node.role, "error", detail=str(e))
    except redis.RedisError as e:
        return NodeStatus(node.name, node.role, "error", detail=str(e))
    info = str_pairs(reply)
    version, sha = info.get("version", ""), info.get("sha256", "")
    if sha != expected.sha256:
        return NodeStatus(
            node.name, node.role, "stale", version, sha, f"expected {expected.version}"
        )
    # The declared hash can survive a hand edit; the code itself cannot.
    if _deployed_code_sha(node) != expected.code_sha256:
        return NodeStatus(
            node.name, node.role, "stale", version, sha, "code differs from its declared sha256"
        )
    return NodeStatus(node.name, node.role, "ok", version, sha)


def _deployed_code_sha(node: Node) -> str:
    libs = node.client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "adcache", "WITHCODE")
    for lib in libs:
        # redis-py turns each library into a dict (keys str or bytes); raw RESP is a flat list.
        fields = lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2], strict=True))
        fields = {text(k): v for k, v in fields.items()}
        name = fields.get("library_name")
        if text(name) == "adcache":
            code = fields.get("library_code", b"")
            return hashlib.sha256(
                code if isinstance(code, bytes) else str(code).encode()
            ).hexdigest()
    return ""


def verify(url: str, cluster: bool | None = None, source: str | None = None) -> list[NodeStatus]:
    """ac_version of every node against the source (default: the bundled library)."""
    expected = Expected.of(source or library_source())
    with nodes(url, cluster) as ns:
        return [node_status(n, expected) for n in ns]


def deploy(
    url: str,
    cluster: bool | None = None,
    source: str | None = None,
    *,
    replica_wait_s: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> list[NodeStatus]:
    """FUNCTION LOAD REPLACE on every primary, then wait for replicas and verify every node.

    Idempotent: loading the same source again changes nothing. Re-run it after a topology change.
    """
    source = source or library_source()
    expected = Expected.of(source)
    with nodes(url, cluster) as ns:
        for n in ns:
            if n.role != "primary":
                continue
            n.client.execute_command("FUNCTION", "LOAD", "REPLACE", source)
            log.info("loaded adcache %s on %s", expected.version, n.name)
            if progress:
                progress(n.name)
        deadline = time.monotonic() + replica_wait_s
        while True:
            statuses = [node_status(n, expected) for n in ns]
            lagging = [s for s in statuses if s.role == "replica" and not s.in_sync]
            if not lagging or time.monotonic() > deadline:
                return statuses
            time.sleep(0.1)


def dump(url: str, cluster: bool | None = None) -> bytes:
    """FUNCTION DUMP of the first primary, after checking every primary holds the same library."""
    with nodes(url, cluster) as ns:
        primaries = [n for n in ns if n.role == "primary"]
        payloads = {n.name: n.client.execute_command("FUNCTION", "DUMP") for n in primaries}
    if len({bytes(p) if p else b"" for p in payloads.values()}) != 1:
        raise RuntimeError(
            "primaries hold different function libraries; run `adcache verify` and `adcache deploy`"
        )
    payload = next(iter(payloads.values()))
    if not payload:
        raise RuntimeError("no functions to dump")
    return bytes(payload)


def restore(
    url: str, payload: bytes, cluster: bool | None = None, policy: str = "REPLACE"
) -> list[str]:
    """FUNCTION RESTORE on every primary (policy FLUSH, APPEND or REPLACE)."""
    done = []
    with nodes(url, cluster) as ns:
        for n in ns:
            if n.role == "primary":
                n.client.execute_command("FUNCTION", "RESTORE", payload, policy)
                done.append(n.name)
    return done
