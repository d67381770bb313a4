"""The servers a benchmark run uses: given ones, or throwaway ones started for the run."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from redis.cluster import RedisCluster

from adcache import AdCache
from adcache_loader.deploy import deploy
from adcache_loader.servers import LocalCluster, RedisServer

Redis = redis.Redis  # the method `BenchEnv.redis` hides the module inside the class


@dataclass
class BenchEnv:
    standalone_url: str
    cluster_url: str | None
    scale: float = 1.0  # multiplies every case's call count (ADCACHE_BENCH_SCALE)
    processes: int = 2  # client processes of the multi-process phase

    def calls(self, n: int) -> int:
        return max(10, int(n * self.scale))

    def redis(self) -> Redis:
        return redis.Redis.from_url(self.standalone_url)

    def cluster(self) -> RedisCluster:
        assert self.cluster_url is not None
        return RedisCluster.from_url(self.cluster_url)

    def adcache(self) -> AdCache:
        return AdCache(self.redis())

    def adcache_cluster(self) -> AdCache:
        return AdCache(self.cluster())

    def cluster_primaries(self) -> list[Redis]:
        rc = self.cluster()
        return [rc.get_redis_connection(n) for n in rc.get_primaries()]


def scale_from_env(default: float = 1.0) -> float:
    return float(os.environ.get("ADCACHE_BENCH_SCALE", default))


@contextlib.contextmanager
def throwaway_cluster(primaries: int) -> Iterator[str]:
    """A local cluster of `primaries` primaries with the library deployed: its seed URL."""
    # A lone node does not know its own address (CLUSTER SLOTS gives ""): announce it.
    cl = LocalCluster(primaries, extra_args=["--cluster-announce-ip", "127.0.0.1"]).start()
    try:
        deploy(cl.seed_url)
        yield cl.seed_url
    finally:
        cl.stop()


@contextlib.contextmanager
def bench_env(
    standalone_url: str | None = None,
    cluster_url: str | None = None,
    *,
    with_cluster: bool = True,
    scale: float | None = None,
    processes: int = 2,
) -> Iterator[BenchEnv]:
    started: list[RedisServer | LocalCluster] = []
    try:
        if standalone_url is None:
            server = RedisServer().start()
            started.append(server)
            standalone_url = server.url
        if cluster_url is None and with_cluster:
            cl = LocalCluster(3).start()
            started.append(cl)
            cluster_url = cl.seed_url
        deploy(standalone_url)
        if cluster_url:
            deploy(cluster_url)
        yield BenchEnv(
            standalone_url, cluster_url, scale_from_env() if scale is None else scale, processes
        )
    finally:
        for s in reversed(started):
            s.stop()
