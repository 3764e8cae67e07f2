#!/usr/bin/env bash
# The two-device walkthrough and its version 2, set up and run in one
# command against a running witness (scripts/witness.sh):
#   PDB_ADMIN_TOKEN=<the witness's admin token> scripts/walkthrough.sh
# It creates a fresh group (walkthrough-<time>) from
# sql/walkthrough_schema.sql, makes a token for it (an admin of that group
# only: version 2 is a migration, which the group's admin submits), writes
# .walkthrough/pdb_params.sql and runs sql/walkthrough.sql, then
# sql/walkthrough_v2.sql, in .walkthrough/ (the two devices' databases).
# PDB_URL: the witness (default: where the one scripts/witness.sh started
# listens, from .pdb-data/url; else http://127.0.0.1:7070).
set -euo pipefail
cd "$(dirname "$0")/.."
data="${PDB_DATA_DIR:-.pdb-data}"
url="${PDB_URL:-$(cat "$data/url" 2>/dev/null || echo http://127.0.0.1:7070)}"
[ -n "${PDB_ADMIN_TOKEN:-}" ] || {
  echo "walkthrough.sh: set PDB_ADMIN_TOKEN to the witness's admin token (printed on its first start)" >&2
  exit 2
}
for tool in sqlite3 curl python3; do
  command -v "$tool" >/dev/null || { echo "walkthrough.sh: $tool is needed (scripts/setup.sh installs sqlite3)" >&2; exit 1; }
done
lib="$PWD/target/release/libpdb"
[ -f "$lib.so" ] || { echo "walkthrough.sh: $lib.so is missing: build it (cargo build --release)" >&2; exit 1; }

group="walkthrough-$(date +%s)"
api() {  # api PATH JSON: POST as the operator, the answer's JSON on stdout
  local out status
  out="$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer $PDB_ADMIN_TOKEN" "$url$1" -d "$2")" || {
    echo "walkthrough.sh: the witness at $url did not answer (is scripts/witness.sh running? PDB_URL?)" >&2; exit 1; }
  status="${out##*$'\n'}"; out="${out%$'\n'*}"
  case "$status" in
    2*) printf '%s' "$out" ;;
    *) echo "walkthrough.sh: POST $1: HTTP $status $out" >&2; exit 1 ;;
  esac
}
json() { python3 -c 'import json, sys; print(json.dumps(dict(zip(sys.argv[1::2], sys.argv[2::2]))))' "$@"; }
field() { python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

api /v1/groups "$(json group "$group" schema_sql "$(cat sql/walkthrough_schema.sql)")" >/dev/null
token="$(api /v1/tokens "$(json identity "$group-admin" group "$group" role admin)" | field token)"
echo "walkthrough.sh: group $group created, with a token for its admin"

rm -rf .walkthrough && mkdir .walkthrough
ln -s ../sql .walkthrough/sql
cat >.walkthrough/pdb_params.sql <<SQL
.load $lib
.parameter set @url '$url'
.parameter set @group '$group'
.parameter set @token '$token'
SQL
cd .walkthrough
echo "== sql/walkthrough.sql"
sqlite3 <sql/walkthrough.sql
echo "== sql/walkthrough_v2.sql"
# Its version-1 device stops on purpose (app_upgrade_required), which
# sqlite3 reports with exit status 1 at the end; the rows below say how it
# ended.
sqlite3 <sql/walkthrough_v2.sql || true
