"""The conformance cases (tests/conformance/cases/*.yaml) through raw FCALL, from Python and
from Node.js, on a standalone server and on the 3-primary cluster. See README.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from pyrunner import CASES_DIR, CONTRACTS, Case, Runner, contracts, load_cases
from redis.cluster import RedisCluster

from adcache_loader.servers import ExternalCluster, LocalCluster, Standalone

CASES = load_cases()
NODE_DIR = Path(__file__).resolve().parent / "node"


@pytest.fixture(scope="module")
def raw_standalone(lib_standalone: Standalone) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(lib_standalone.url)
    yield r
    r.close()


@pytest.fixture(scope="module")
def raw_cluster(lib_cluster: LocalCluster | ExternalCluster) -> Iterator[RedisCluster]:
    rc = lib_cluster.client()
    yield rc
    rc.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_standalone(case: Case, raw_standalone: redis.Redis, uid: str) -> None:
    Runner(raw_standalone, uid).run(case)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_cluster(case: Case, raw_cluster: RedisCluster, uid: str) -> None:
    Runner(raw_cluster, uid).run(case)


def _unreachable() -> dict[str, dict[str, str]]:
    data: dict[str, dict[str, dict[str, str]]] = yaml.safe_load(
        (CASES_DIR / "unreachable.yaml").read_text()
    )
    return data["unreachable"]


def test_every_function_has_a_happy_path_case() -> None:
    covered = {fn for c in CASES for fn, codes in c.covers.items() if "ok" in codes}
    missing = sorted(set(contracts()["functions"]) - covered)
    assert not missing, (
        f"functions without a conformance case (add one under {CASES_DIR}): {missing}"
    )


def test_every_documented_error_code_has_a_case_or_a_reason() -> None:
    covered: dict[str, set[str]] = {}
    for c in CASES:
        for fn, codes in c.covers.items():
            covered.setdefault(fn, set()).update(codes)
    skip = _unreachable()
    missing = []
    for name, spec in contracts()["functions"].items():
        for code in spec["errors"]:
            if code not in covered.get(name, set()) and code not in skip.get(name, {}):
                missing.append(f"{name} {code}")
    assert not missing, f"documented error codes without a case or a reason: {missing}"
    for name, codes in covered.items():
        extra = codes - {"ok"} - set(contracts()["functions"].get(name, {}).get("errors", []))
        assert not extra, f"{name} answers {extra}, which its contract header does not list"


def _node() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        pytest.skip("node is not installed here: the Node.js conformance runner is skipped")
    if not (NODE_DIR / "node_modules" / "ioredis").is_dir():
        if not npm:
            pytest.skip("npm is not installed here: the Node.js conformance runner is skipped")
        pytest.skip(f"run `npm ci` in {NODE_DIR} (make test does): ioredis is not installed")
    return node, str(NODE_DIR / "runner.js")


def _run_node(url: str, cluster: bool) -> dict[str, Any]:
    node, script = _node()
    cmd = [node, script, "--url", url, "--cases", str(CASES_DIR), "--contracts", str(CONTRACTS),
           "--json"] + (["--cluster"] if cluster else [])  # fmt: skip
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ))
    try:
        result: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        pytest.fail(f"node runner exited {p.returncode}: {p.stderr[-2000:]}")
    assert result["failed"] == [], f"node runner failures: {result['failed'][:20]}"
    assert result["passed"] == len(CASES), (result["passed"], len(CASES))
    assert p.returncode == 0, p.stderr[-2000:]
    # The example of docs/clients.md ran too: it read the version and met an unknown campaign.
    assert result["example"] == {"version": contracts()["version"], "reserve": "ADCACHE_NOTFOUND"}
    return result


def test_node_runner_standalone(lib_standalone: Standalone) -> None:
    _run_node(lib_standalone.url, cluster=False)


def test_node_runner_cluster(lib_cluster: LocalCluster | ExternalCluster) -> None:
    _run_node(lib_cluster.seed_url, cluster=True)


def test_clients_doc_examples_are_the_runners_code() -> None:
    import snippets

    text = snippets.DOC.read_text()
    assert snippets.render(text) == text, (
        "docs/clients.md is stale: run tests/conformance/snippets.py"
    )
    for name in ("connect", "fcall", "example"):
        assert snippets.js_region(name) in text
