#!/usr/bin/env bash
# Starts the witness on 127.0.0.1:7070 with its data in ./.pdb-data
# (PDB_DATA_DIR). Installs and builds only what the witness needs (the
# build prerequisites with apt, then `cargo build --release -p pdb-witness`;
# no npm, no extension, no tests).
# Extra arguments go to `pdb-witness serve` (see --help), except:
#   --no-build    run the existing build as it is, without cargo build
set -euo pipefail
cd "$(dirname "$0")/.."
build=1
args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    *) args+=("$a") ;;
  esac
done
scripts/setup.sh --witness
if [ "$build" = 1 ]; then
  cargo build --release -p pdb-witness
fi
exec ./target/release/pdb-witness --data-dir "${PDB_DATA_DIR:-.pdb-data}" serve ${args[@]+"${args[@]}"}
