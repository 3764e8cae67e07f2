#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, lint, build, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --release -- -D warnings
# The end-to-end tests start the built witness binary: build it first.
cargo build --release --workspace
cargo test --release --workspace
