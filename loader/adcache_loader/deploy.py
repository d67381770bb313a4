"""Deploy the library to a standalone server or to every primary of a cluster, and check it.

Nodes are found with CLUSTER NODES on the seed, not from the slot map: a primary that owns no slots
yet (just added by hand) is listed there and gets the library too, so it is ready when slots move.
Replicas receive functions by replication; `verify` still reads `ac_version` on each of them.

A degraded cluster is reported, never hidden: every node the seed knows is listed, failed ones
included. A node that does not answer is `unreachable`; one still loading its dataset is `loading`
(deploy waits for it, bounded); one the seed still flags `fail` is `flagged` even when it answers,
because clients cannot reach its slots until the cluster clears the flag. Only `ok` is in sync, so
`deploy` and `verify` exit non-zero whenever a node is not serving the expected library.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis
from redis.exceptions import BusyLoadingError, ResponseError

from adcache._core import str_pairs, text
from adcache_loader.paths import library_source
from adcache_loader.render import source_sha256

log = logging.getLogger("adcache.loader")


# Flags of CLUSTER NODES that mean the seed cannot count on the node.
FAILED_FLAGS = frozenset({"fail", "fail?", "noaddr"})


@dataclass(frozen=True)
class Node:
    name: str  # host:port
    role: str  # "primary" | "replica"
    client: redis.Redis
    flags: frozenset[str] = frozenset()  # the seed's CLUSTER NODES flags (empty when standalone)
    problem: str = ""  # why the node could not be asked its role ("" when it answered)

    @property
    def failed_flags(self) -> list[str]:
        return sorted(self.flags & FAILED_FLAGS)


@dataclass(frozen=True)
class NodeStatus:
    node: str
    role: str
    state: str  # "ok" | "stale" | "missing" | "loading" | "flagged" | "unreachable" | "error"
    version: str = ""
    sha256: str = ""
    detail: str = ""
    warning: str = ""  # set by deploy: the library would not survive a restart of this node

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


def _parse_cluster_nodes(text: str) -> list[tuple[str, int, str, frozenset[str]]]:
    """(host, port, role, flags) of every node the listing knows, failed ones included.

    Only nodes still in handshake are left out: they are not members yet (a CLUSTER MEET in
    progress) and carry a temporary id. A node with no address keeps its last known one.
    """
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 8:
            continue
        addr, flags = parts[1], frozenset(parts[2].split(","))
        if "handshake" in flags:
            continue
        hostport = addr.split("@")[0].split(",")[0]
        host, _, port = hostport.rpartition(":")
        if not port.isdigit() or int(port) == 0:
            continue  # never had an address: nothing to connect to or report by
        role = "primary" if "master" in flags else "replica"
        out.append((host, int(port), role, flags))
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
        for host, port, seen_as, flags in _parse_cluster_nodes(listing):
            c = _client_like(seed, host, port)
            opened.append(c)
            # Each node's own ROLE: the seed's view lags while gossip spreads (a node just made a
            # replica can still be listed as a master there, and loading on it would fail).
            problem = ""
            try:
                role = "primary" if text(c.execute_command("ROLE")[0]) == "master" else "replica"
            except (redis.ConnectionError, redis.TimeoutError) as e:
                role, problem = seen_as, f"{type(e).__name__}: {e}"
            except redis.RedisError:
                role = seen_as  # ROLE not allowed to this user, say: trust the seed
            found.append(Node(f"{host}:{port}", role, c, flags, problem))
        found.sort(key=lambda n: (n.role != "primary", n.name))
        yield found
    finally:
        for c in opened:
            c.close()


def node_status(node: Node, expected: Expected) -> NodeStatus:
    status = _library_status(node, expected)
    failed = node.failed_flags
    if status.state == "ok" and failed:
        # It answers, but the cluster does not route to it yet: not serving.
        return NodeStatus(
            node.name,
            node.role,
            "flagged",
            status.version,
            status.sha256,
            f"library ok, but the cluster flags it {','.join(failed)}",
        )
    if failed and status.state != "unreachable":
        return NodeStatus(
            status.node,
            status.role,
            status.state,
            status.version,
            status.sha256,
            f"{status.detail}; cluster flags it {','.join(failed)}".lstrip("; "),
        )
    return status


def _unreachable(node: Node, why: str) -> NodeStatus:
    flagged = f" (cluster flags it {','.join(node.failed_flags)})" if node.failed_flags else ""
    return NodeStatus(node.name, node.role, "unreachable", detail=f"{why}{flagged}")


def _library_status(node: Node, expected: Expected) -> NodeStatus:
    if node.problem:
        return _unreachable(node, node.problem)
    try:
        reply = node.client.execute_command("FCALL_RO", "ac_version", 0)
    except BusyLoadingError:
        return NodeStatus(node.name, node.role, "loading", detail="loading its dataset")
    except ResponseError as e:
        if "not found" in str(e).lower():
            return NodeStatus(node.name, node.role, "missing", detail="no adcache library")
        return NodeStatus(node.name, node.role, "error", detail=str(e))
    except (redis.ConnectionError, redis.TimeoutError) as e:
        return _unreachable(node, f"{type(e).__name__}: {e}")
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


def _load(
    node: Node,
    source: str,
    loading_wait_s: float,
    progress: Callable[[str], None] | None,
) -> str:
    """FUNCTION LOAD REPLACE on one primary, retried while it is loading its dataset (bounded).

    Returns "" when loaded, else why not (the node is then reported by its status).
    """
    deadline = time.monotonic() + loading_wait_s
    announced = False
    delay = 0.05
    while True:
        try:
            node.client.execute_command("FUNCTION", "LOAD", "REPLACE", source)
            return ""
        except BusyLoadingError:
            if time.monotonic() >= deadline:
                return f"still loading after {loading_wait_s:g}s"
            if progress and not announced:
                progress(f"{node.name} is loading its dataset: waiting up to {loading_wait_s:g}s")
                announced = True
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            return f"{type(e).__name__}: {e}"


def _persistence_warning(node: Node, save: bool, save_wait_s: float) -> str:
    """Why the library just loaded on `node` would be lost by a restart, or "".

    Functions are part of the dataset: AOF keeps them; RDB keeps them only once a snapshot is
    taken after the load (a server restarted from an older snapshot answers `Function not found`).
    With `save`, a BGSAVE is taken now and waited for.
    """
    try:
        info = node.client.info("persistence")
        if str(info.get("aof_enabled", 0)) == "1":
            return ""
        if save:
            node.client.execute_command("BGSAVE", "SCHEDULE")
            deadline = time.monotonic() + save_wait_s
            while True:
                info = node.client.info("persistence")
                done = str(info.get("rdb_bgsave_in_progress", 0)) == "0" and not int(
                    info.get("rdb_changes_since_last_save", 1)
                )
                if done and info.get("rdb_last_bgsave_status") == "ok":
                    return ""
                if time.monotonic() > deadline:
                    return f"BGSAVE not done after {save_wait_s:g}s: the library is not on disk"
                time.sleep(0.05)
    except redis.RedisError as e:
        return f"persistence unknown ({type(e).__name__}: {e})"
    if int(info.get("rdb_changes_since_last_save", 0)) == 0:
        return ""
    return (
        "no AOF and no snapshot since the load: a restart would come back without the library "
        "(enable appendonly, or deploy with --save to BGSAVE now)"
    )


def deploy(
    url: str,
    cluster: bool | None = None,
    source: str | None = None,
    *,
    replica_wait_s: float = 10.0,
    loading_wait_s: float = 30.0,
    save: bool = False,
    save_wait_s: float = 60.0,
    progress: Callable[[str], None] | None = None,
) -> list[NodeStatus]:
    """FUNCTION LOAD REPLACE on every primary, then wait for replicas and verify every node.

    A primary still loading its dataset is retried for up to `loading_wait_s`; a node that does
    not answer is reported `unreachable` (and the others are deployed all the same). A primary
    without AOF gets a `warning` in its status unless `save` (BGSAVE after the load) made a
    snapshot that holds the library.
    Idempotent: loading the same source again changes nothing. Re-run it after a topology change.
    """
    source = source or library_source()
    expected = Expected.of(source)
    warnings: dict[str, str] = {}
    with nodes(url, cluster) as ns:
        for n in ns:
            if n.role != "primary":
                continue
            why = _load(n, source, loading_wait_s, progress)
            if why:
                log.warning("could not load adcache on %s: %s", n.name, why)
                continue
            log.info("loaded adcache %s on %s", expected.version, n.name)
            if progress:
                progress(f"loaded on {n.name}")
            warning = _persistence_warning(n, save, save_wait_s)
            if warning:
                warnings[n.name] = warning
                log.info("%s: %s", n.name, warning)
        deadline = time.monotonic() + replica_wait_s
        while True:
            statuses = [node_status(n, expected) for n in ns]
            lagging = [
                s
                for s in statuses
                if s.role == "replica" and s.state in ("missing", "stale", "loading")
            ]
            if not lagging or time.monotonic() > deadline:
                return [
                    dataclasses.replace(s, warning=warnings[s.node]) if s.node in warnings else s
                    for s in statuses
                ]
            time.sleep(0.1)


def dump(url: str, cluster: bool | None = None) -> bytes:
    """FUNCTION DUMP of the first primary, after checking every primary holds the same library."""
    with nodes(url, cluster) as ns:
        primaries = [n for n in ns if n.role == "primary"]
        down = [n.name for n in primaries if n.problem]
        if down:
            raise RuntimeError(f"primaries unreachable: {', '.join(down)}; cannot dump them all")
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
    """FUNCTION RESTORE on every primary (policy FLUSH, APPEND or REPLACE).

    Returns the nodes restored; raises when a primary is unreachable (after restoring the others).
    """
    done = []
    with nodes(url, cluster) as ns:
        down = [n.name for n in ns if n.role == "primary" and n.problem]
        for n in ns:
            if n.role == "primary" and not n.problem:
                n.client.execute_command("FUNCTION", "RESTORE", payload, policy)
                done.append(n.name)
    if down:
        raise RuntimeError(
            f"restored on {', '.join(done) or 'no node'}; unreachable: {', '.join(down)}"
        )
    return done
