"""The loader: deploy, verify (drift per node), dump/restore, the CLI, and plain redis-cli loading."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from adcache import _generated
from adcache_loader import deploy as d
from adcache_loader.cli import main
from adcache_loader.paths import library_source, project_paths
from adcache_loader.servers import LocalCluster, RedisServer


@pytest.fixture
def bare(redis_binary: str) -> Iterator[RedisServer]:
    s = RedisServer(redis_binary).start()
    yield s
    s.stop()


def test_plain_redis_cli_loads_the_committed_file(bare: RedisServer) -> None:
    cli = shutil.which("redis-cli")
    if cli is None:
        pytest.skip("redis-cli is not installed")
    src = project_paths().library.read_text()
    out = subprocess.run(
        [cli, "-p", str(bare.port), "FUNCTION", "LOAD", "REPLACE", src],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "adcache"
    out = subprocess.run(
        [cli, "-p", str(bare.port), "FCALL", "ac_version", "0"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [
        "name",
        "adcache",
        "version",
        _generated.LIBRARY_VERSION,
        "sha256",
        _generated.LIBRARY_SHA256,
    ]


def test_deploy_verify_standalone_and_idempotent(bare: RedisServer) -> None:
    assert [s.state for s in d.verify(bare.url)] == ["missing"]
    for _ in range(2):
        statuses = d.deploy(bare.url)
        assert [(s.role, s.state, s.version) for s in statuses] == [
            ("primary", "ok", _generated.LIBRARY_VERSION)
        ]


def test_verify_reports_stale(bare: RedisServer) -> None:
    other = library_source().replace("Delete a session.", "Delete a session!")
    bare.client().function_load(other, replace=True)
    (status,) = d.verify(bare.url)
    assert status.state == "stale"
    runner = CliRunner()
    r = runner.invoke(main, ["verify", "--url", bare.url])
    assert r.exit_code == 1 and "stale" in r.output and "drift" in r.output
    r = runner.invoke(main, ["deploy", "--url", bare.url])
    assert r.exit_code == 0, r.output
    assert runner.invoke(main, ["verify", "--url", bare.url]).exit_code == 0


def test_dump_and_restore(bare: RedisServer, tmp_path: Path) -> None:
    d.deploy(bare.url)
    runner = CliRunner()
    f = tmp_path / "lib.dump"
    r = runner.invoke(main, ["dump", "--url", bare.url, str(f)])
    assert r.exit_code == 0, r.output
    bare.client().function_flush()
    assert d.verify(bare.url)[0].state == "missing"
    r = runner.invoke(main, ["restore", "--url", bare.url, str(f)])
    assert r.exit_code == 0, r.output
    assert d.verify(bare.url)[0].state == "ok"


def test_cluster_deploy_drift_on_new_primary_and_redeploy(redis_binary: str) -> None:
    with LocalCluster(3, 1, binary=redis_binary) as cl:
        runner = CliRunner()
        r = runner.invoke(main, ["deploy", "--url", cl.seed_url])
        assert r.exit_code == 0, r.output
        statuses = d.verify(cl.seed_url)
        assert sorted(s.role for s in statuses) == ["primary"] * 3 + ["replica"] * 3
        assert all(s.state == "ok" for s in statuses), statuses
        new = cl.add_primary(with_slots=0)
        statuses = d.verify(cl.seed_url)
        by_node = {s.node: s.state for s in statuses}
        assert by_node[f"127.0.0.1:{new.port}"] == "missing"
        r = runner.invoke(main, ["verify", "--url", cl.seed_url])
        assert r.exit_code == 1 and "missing" in r.output
        r = runner.invoke(main, ["deploy", "--url", cl.seed_url])
        assert r.exit_code == 0, r.output
        assert all(s.state == "ok" for s in d.verify(cl.seed_url))


def test_render_check_cli() -> None:
    r = CliRunner().invoke(main, ["render", "--check"])
    assert r.exit_code == 0, r.output


def test_rdb_only_keeps_the_library_only_in_a_snapshot_taken_after_the_deploy(
    bare: RedisServer,
) -> None:
    runner = CliRunner()
    bare.client().save()  # a snapshot that predates the deploy
    r = runner.invoke(main, ["deploy", "--url", bare.url])
    assert r.exit_code == 0, r.output
    assert "warning" in r.output and "no AOF" in r.output
    bare.kill()
    bare.start()  # back from the older snapshot: no library
    assert d.verify(bare.url)[0].state == "missing"
    with pytest.raises(redis.ResponseError, match="Function not found"):
        bare.client().execute_command("FCALL_RO", "ac_version", 0)
    r = runner.invoke(main, ["deploy", "--url", bare.url, "--save"])
    assert r.exit_code == 0, r.output
    assert "warning" not in r.output
    bare.kill()
    bare.start()  # back from the snapshot taken by --save
    assert d.verify(bare.url)[0].state == "ok"


def test_deploy_on_aof_gives_no_persistence_warning(redis_binary: str) -> None:
    with RedisServer(redis_binary, extra_args=["--appendonly", "yes"]) as s:
        statuses = d.deploy(s.url)
        assert [(x.state, x.warning) for x in statuses] == [("ok", "")]
