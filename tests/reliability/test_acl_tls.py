"""Least privilege (an app user and a deploy user from `adcache acl`) and TLS URLs."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from redis.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from adcache import AdCache
from adcache_loader.cli import main
from adcache_loader.deploy import verify
from adcache_loader.servers import LocalCluster, RedisServer

APP, DEPLOY = ("adcache-app", "app-secret"), ("adcache-deploy", "deploy-secret")


def _apply(url: str) -> None:
    # The fixtures' servers keep the default user open (the harness administers them through it).
    args = ["acl", "--url", url, "--app-password", APP[1], "--deploy-password", DEPLOY[1]]
    args.append("--allow-open-default")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output


@pytest.fixture
def acl_server(redis_binary: str) -> Iterator[RedisServer]:
    s = RedisServer(redis_binary).start()
    _apply(s.url)
    yield s
    s.stop()


def _as(server: RedisServer, user: tuple[str, str]) -> redis.Redis:
    return redis.Redis(port=server.port, username=user[0], password=user[1])


def test_deploy_user_deploys_and_app_user_runs_the_library(
    acl_server: RedisServer, uid: str
) -> None:
    url = f"redis://{DEPLOY[0]}:{DEPLOY[1]}@127.0.0.1:{acl_server.port}"
    r = CliRunner().invoke(main, ["deploy", "--url", url])
    assert r.exit_code == 0, r.output
    assert all(s.in_sync for s in verify(url))
    app = AdCache(_as(acl_server, APP))
    app.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    assert app.sessions.get(uid) is not None


def test_app_user_cannot_load_flush_or_read_other_keys(acl_server: RedisServer) -> None:
    acl_server.client().set("other:secret", "x")
    app = _as(acl_server, APP)
    for cmd in (
        (
            "FUNCTION",
            "LOAD",
            "REPLACE",
            "#!lua name=evil\nredis.register_function('x', function() return 1 end)",
        ),
        ("FUNCTION", "FLUSH"),
        ("FLUSHALL",),
        ("FLUSHDB",),
        ("CONFIG", "SET", "maxmemory", "1"),
        ("KEYS", "*"),
        ("GET", "other:secret"),
        ("HGETALL", "other:secret"),
        ("SET", "ad:junk", "no TTL"),  # no adcache key has this shape
    ):
        with pytest.raises(NoPermissionError):
            app.execute_command(*cmd)
    assert acl_server.client().get("other:secret") == b"x"


def test_deploy_user_cannot_touch_data(acl_server: RedisServer, uid: str) -> None:
    dep = _as(acl_server, DEPLOY)
    with pytest.raises(NoPermissionError):
        dep.execute_command(
            "FCALL", "ac_session_create", 1, f"ad:{{s:{uid}}}:sess", "u", 1000, 1000
        )
    with pytest.raises(NoPermissionError):
        dep.execute_command("FLUSHALL")
    with pytest.raises(NoPermissionError):
        dep.execute_command("HGETALL", f"ad:{{s:{uid}}}:sess")


def test_app_user_on_a_cluster(redis_binary: str, uid: str) -> None:
    with LocalCluster(3, binary=redis_binary) as cl:
        _apply(cl.seed_url)
        r = CliRunner().invoke(
            main,
            [
                "deploy",
                "--url",
                f"redis://{DEPLOY[0]}:{DEPLOY[1]}@127.0.0.1:{cl.primaries[0].port}",
            ],
        )
        assert r.exit_code == 0, r.output
        rc = RedisCluster(
            host="127.0.0.1", port=cl.primaries[0].port, username=APP[0], password=APP[1]
        )
        app = AdCache(rc)
        ids = [f"{uid}-{i}" for i in range(20)]
        for sid in ids:
            app.sessions.create(sid, "u", idle_ttl=60, max_lifetime=60)
        assert all(app.sessions.get_many(ids))
        with pytest.raises((NoPermissionError, ResponseError)):
            rc.execute_command("FLUSHALL", target_nodes=RedisCluster.PRIMARIES)


@pytest.fixture
def tls_server(redis_binary: str, tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path]]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make test certificates")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=tmp_path, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=adcache-test-ca",
    )
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (tmp_path / "ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost")
    run(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    )
    from adcache_loader.servers import free_port

    tls_port = free_port()
    args = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(tmp_path / "server.crt"),
        "--tls-key-file",
        str(tmp_path / "server.key"),
        "--tls-ca-cert-file",
        str(tmp_path / "ca.crt"),
        "--tls-auth-clients",
        "no",
    ]
    try:
        s = RedisServer(redis_binary, extra_args=args).start()
    except Exception as e:
        pytest.skip(f"this redis-server cannot serve TLS: {e}")
    yield s, tls_port, tmp_path / "ca.crt"
    s.stop()


def test_tls_urls_work_in_loader_and_client(
    tls_server: tuple[RedisServer, int, Path], uid: str
) -> None:
    _server, port, ca = tls_server
    url = f"rediss://127.0.0.1:{port}?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    r = CliRunner().invoke(main, ["deploy", "--url", url])
    assert r.exit_code == 0, r.output
    cache = AdCache.from_url(url)
    cache.sessions.create(uid, "u", idle_ttl=60, max_lifetime=60)
    assert cache.sessions.get(uid) is not None
    # The connection really is TLS: a plain client on the TLS port fails.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=port, socket_timeout=1).ping()
