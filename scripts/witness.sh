#!/usr/bin/env bash
# Starts the witness on 127.0.0.1:7070 with its data in ./.pdb-data.
# Extra arguments go to `pdb-witness serve` (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The whole workspace, so features unify with the test build (no rebuild).
cargo build --release --workspace
exec ./target/release/pdb-witness --data-dir "${PDB_DATA_DIR:-.pdb-data}" serve "$@"
