#!/usr/bin/env bash
# Make sure a redis-server >= 7.0 is available: $ADCACHE_REDIS_SERVER, else PATH, else install
# Debian/Ubuntu's package (as root, or with sudo).
set -euo pipefail
bin="${ADCACHE_REDIS_SERVER:-$(command -v redis-server || true)}"
major() { "$1" --version | sed -n 's/.*v=\([0-9]*\)\..*/\1/p'; }
if [ -n "$bin" ] && [ "$(major "$bin")" -ge 7 ] 2>/dev/null; then
  exit 0
fi
if [ -n "${ADCACHE_REDIS_SERVER:-}" ]; then
  echo "ADCACHE_REDIS_SERVER=$ADCACHE_REDIS_SERVER is not a redis-server >= 7" >&2
  exit 1
fi
echo "installing redis-server (>= 7) with apt-get" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq redis-server >/dev/null
# The package may start a system service; adcache never uses it (tests pick their own ports).
bin="$(command -v redis-server)"
if [ "$(major "$bin")" -lt 7 ]; then
  echo "the system package gave $("$bin" --version); adcache needs Redis >= 7" >&2
  exit 1
fi
