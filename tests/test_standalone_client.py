"""The adcache package stands alone: it imports and works (auto_deploy included, with the library
it ships as package data) when adcache_loader cannot be imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from adcache._core import library_source
from adcache_loader.paths import project_paths
from adcache_loader.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = """
import sys
sys.modules["adcache_loader"] = None  # any import of it now fails
import pkgutil, importlib, redis, adcache
for m in pkgutil.walk_packages(adcache.__path__, "adcache."):
    importlib.import_module(m.name)
from adcache import AdCache
from adcache.monitor import classify
cache = AdCache(redis.Redis(port=int(sys.argv[1])), auto_deploy=True)
cache.sessions.create("s1", "u1", idle_ttl=60, max_lifetime=60)
s = cache.sessions.get("s1")
assert s is not None and s.user_id == "u1", s
assert classify(adcache._generated.session("s1")).name == "session"
assert "adcache_loader" not in {k for k, v in sys.modules.items() if v is not None}
print("standalone ok")
"""


def test_the_client_works_without_the_loader(redis_binary: str) -> None:
    server = RedisServer(redis_binary).start()  # no library: auto_deploy loads the packaged one
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "python_client")}
        out = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(server.port)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
        )
        assert out.returncode == 0, out.stderr
        assert "standalone ok" in out.stdout
    finally:
        server.stop()


def test_the_packaged_library_is_the_rendered_one() -> None:
    assert library_source() == project_paths().library.read_text()


def test_the_wheel_ships_the_library() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert '"python_client/adcache"' in text  # the package dir, _library/ included
    assert (ROOT / "python_client" / "adcache" / "_library" / "adcache.lua").is_file()
