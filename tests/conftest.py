"""Shared pytest fixtures: throwaway Redis servers and clusters (see servers.py).

Environment:
* ``ADCACHE_REDIS_SERVER``: redis-server binary to use (default: from PATH).
* ``ADCACHE_TEST_REDIS_URL``: use this running standalone server instead of starting one.
* ``ADCACHE_TEST_CLUSTER_URL``: seed node of a running cluster to use instead of starting one.
External URLs must point at a loopback address.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit

import pytest

from adcache import AdCache, aio
from adcache_loader.servers import (
    ExternalCluster,
    LocalCluster,
    RedisServer,
    Standalone,
    check_loopback_url,
    find_redis_server,
    stop_all,
)
from adcache_loader.servers import redis_version as binary_version

ENV_REDIS_URL = "ADCACHE_TEST_REDIS_URL"
ENV_CLUSTER_URL = "ADCACHE_TEST_CLUSTER_URL"
SLOW_FIXTURES = frozenset({"cluster_with_replicas"})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: starts its own multi-node cluster (a few seconds per test)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests using a fresh per-test cluster are slow; mark them so `-m "not slow"` works.
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Safety net behind the fixture finalizers (e.g. after an interrupted setup).
    stop_all()


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """Path of a redis-server >= 7.0 (``$ADCACHE_REDIS_SERVER`` or PATH)."""
    return find_redis_server()


@pytest.fixture(scope="session")
def redis_version(redis_binary: str) -> tuple[int, int, int]:
    """(major, minor, patch) of ``redis_binary``."""
    return binary_version(redis_binary)


@pytest.fixture(scope="session")
def standalone(request: pytest.FixtureRequest) -> Iterator[Standalone]:
    """One standalone server for the whole session (or ``$ADCACHE_TEST_REDIS_URL``).

    Shared: tests must isolate their keys with ``uid``.
    """
    url = os.environ.get(ENV_REDIS_URL)
    if url:
        yield Standalone(check_loopback_url(url))
        return
    binary: str = request.getfixturevalue("redis_binary")
    server = RedisServer(binary)
    try:
        server.start()
        yield Standalone(server.url, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[LocalCluster | ExternalCluster]:
    """A 3-primary, 0-replica cluster for the whole session (or ``$ADCACHE_TEST_CLUSTER_URL``).

    Shared: tests must not change its topology or kill its nodes.
    """
    url = os.environ.get(ENV_CLUSTER_URL)
    if url:
        yield ExternalCluster(check_loopback_url(url))
        return
    binary: str = request.getfixturevalue("redis_binary")
    local = LocalCluster(3, 0, binary=binary)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def cluster_with_replicas(redis_binary: str) -> Iterator[LocalCluster]:
    """A fresh 3-primary cluster with one replica each, for tests that kill nodes."""
    local = LocalCluster(3, 1, binary=redis_binary)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture
def uid() -> str:
    """A short id unique to this test, safe inside keys (no ``{``, ``}`` or ``:``)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def docker_redis() -> Iterator[Standalone]:
    """A redis:7 container via testcontainers; skipped without a local Docker engine."""
    try:
        import docker  # type: ignore[import-untyped, import-not-found, unused-ignore]
        from testcontainers.redis import (  # type: ignore[import-untyped, import-not-found, unused-ignore]
            RedisContainer,
        )
    except ImportError as exc:
        pytest.skip(f"testcontainers is not installed: {exc}")
    try:
        engine = docker.from_env()
        engine.ping()
        engine.close()
    except Exception as exc:  # any failure means "no engine"
        pytest.skip(f"no Docker engine reachable: {type(exc).__name__}: {exc}")
    container = RedisContainer("redis:7")
    try:
        container.start()
    except Exception as exc:  # e.g. the image cannot be pulled here
        container.stop()
        pytest.skip(f"could not start a redis:7 container: {type(exc).__name__}: {exc}")
    try:
        host = container.get_container_host_ip()
        port = int(container.get_exposed_port(6379))
        url = f"redis://{host}:{port}"
        if urlsplit(url).hostname not in {"127.0.0.1", "localhost", "::1"}:
            pytest.skip(f"Docker engine is not local (container host {host!r})")
        yield Standalone(f"redis://127.0.0.1:{port}")
    finally:
        container.stop()


# ---- the library, deployed; and clients over it ----


@pytest.fixture(scope="session")
def lib_standalone(standalone: Standalone) -> Standalone:
    """The session's standalone server with the library deployed."""
    from adcache_loader.deploy import deploy

    deploy(standalone.url)
    return standalone


@pytest.fixture(scope="session")
def lib_cluster(cluster: LocalCluster | ExternalCluster) -> LocalCluster | ExternalCluster:
    """The session's 3-primary cluster with the library deployed on every primary."""
    from adcache_loader.deploy import deploy

    deploy(cluster.seed_url)
    return cluster


@pytest.fixture
def ac(lib_standalone: Standalone) -> Iterator[AdCache]:
    """Synchronous client on the standalone server."""
    cache = AdCache(lib_standalone.client())
    yield cache
    cache.close()


@pytest.fixture
def ac_cluster(lib_cluster: LocalCluster | ExternalCluster) -> Iterator[AdCache]:
    """Synchronous client on the cluster."""
    cache = AdCache(lib_cluster.client())
    yield cache
    cache.close()


@pytest.fixture(params=["standalone", "cluster"])
def acs(request: pytest.FixtureRequest) -> AdCache:
    """Synchronous client, once on the standalone server and once on the cluster."""
    name = "ac" if request.param == "standalone" else "ac_cluster"
    cache: AdCache = request.getfixturevalue(name)
    return cache


@pytest.fixture
async def aac(lib_standalone: Standalone) -> AsyncIterator[aio.AdCache]:
    """Asyncio client on the standalone server."""
    cache = await aio.AdCache.from_url(lib_standalone.url, cluster=False)
    yield cache
    await cache.aclose()


@pytest.fixture
async def aac_cluster(lib_cluster: LocalCluster | ExternalCluster) -> AsyncIterator[aio.AdCache]:
    """Asyncio client on the cluster."""
    cache = await aio.AdCache.from_url(lib_cluster.seed_url, cluster=True)
    yield cache
    await cache.aclose()


@pytest.fixture(params=["standalone", "cluster"])
async def aacs(request: pytest.FixtureRequest) -> AsyncIterator[aio.AdCache]:
    """Asyncio client, once on the standalone server and once on the cluster."""
    cluster = request.param == "cluster"
    target = request.getfixturevalue("lib_cluster" if cluster else "lib_standalone")
    cache = await aio.AdCache.from_url(target.seed_url if cluster else target.url, cluster=cluster)
    yield cache
    await cache.aclose()


def pytest_report_header(config: pytest.Config) -> str:
    try:
        binary = find_redis_server()
        return f"redis-server: {binary} {'.'.join(map(str, binary_version(binary)))}"
    except Exception as e:  # the fixtures will fail with the full reason
        return f"redis-server: unavailable ({e})"
