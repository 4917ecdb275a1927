#!/usr/bin/env bash
# Installs every build, test and run dependency of Herald. Idempotent: a
# second run installs nothing and finishes in about a second.
#
#   scripts/deps.sh            apt packages + npm packages of tests/
#   scripts/deps.sh --no-npm   apt packages only
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive

pkgs=(
  build-essential cmake pkg-config
  libuv1-dev libwslay-dev node-llhttp libluajit-5.1-dev luajit
  libjansson-dev libhiredis-dev libcmocka-dev
  lua-busted redis-server curl ca-certificates
  clang libclang-rt-14-dev   # make fuzz (libFuzzer) and LeakSanitizer
  chromium                   # browser tests (playwright-core drives it)
)
# Node and npm: the machine image may ship its own; use Debian's otherwise.
command -v node >/dev/null 2>&1 || pkgs+=(nodejs)
command -v npm  >/dev/null 2>&1 || pkgs+=(npm)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "deps: installing ${missing[*]}"
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-}" != "--no-npm" ] && [ -f "$here/tests/package.json" ]; then
  # npm ci only when the lock file changed since the last install.
  stamp="$here/tests/node_modules/.herald-lock-stamp"
  if [ ! -f "$stamp" ] || ! cmp -s "$stamp" "$here/tests/package-lock.json"; then
    echo "deps: npm ci (tests/)"
    (cd "$here/tests" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$here/tests/package-lock.json" "$stamp"
  fi
fi
