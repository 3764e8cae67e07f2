#!/usr/bin/env bash
# Installs what building and testing PersonalDB needs on a fresh Debian
# machine of this kind. Idempotent: does nothing when all is present.
#   --witness   only what building the witness needs (scripts/witness.sh):
#               no test hosts, no npm
set -euo pipefail

witness_only=0
[ "${1:-}" = "--witness" ] && witness_only=1

# libclang-dev: bindgen for rusqlite's session feature (the witness too).
# sqlite3-tools: sqldiff, a real external producer of changesets (tests).
# sqlite3: the CLI host the extension is tested in.
# python3-venv: fresh virtual environments for the wheel (scripts/package.sh,
#   tests/tests/packages.rs); binutils: strip and objdump for packaging.
if [ "$witness_only" = 1 ]; then
  packages=(libclang-dev)
else
  packages=(libclang-dev sqlite3 sqlite3-tools python3-venv binutils)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (rustup)"; exit 1; }
[ "$witness_only" = 1 ] && exit 0

# Node host for the extension tests: better-sqlite3@12 (compiles, ~1 min).
here="$(cd "$(dirname "$0")/.." && pwd)"
if command -v npm >/dev/null && [ ! -f "$here/tests/node/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ]; then
  echo "setup: installing better-sqlite3 for the Node host test"
  (cd "$here/tests/node" && npm install --no-audit --no-fund --loglevel=error)
fi

# TypeScript, to check the Node package's index.d.ts (tests/tests/packages.rs).
if command -v npm >/dev/null && [ ! -x "$here/packages/node/node_modules/.bin/tsc" ]; then
  echo "setup: installing typescript for the Node package's type check"
  (cd "$here/packages/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
