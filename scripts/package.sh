#!/usr/bin/env bash
# Builds the installable packages into dist/:
#   personaldb-VERSION-py3-none-PLATFORM.whl   Python: personaldb.load(conn)
#   personaldb-VERSION.tgz                     Node: require('personaldb').load(db)
#   pdb-witness-VERSION-TARGET.tar.gz          the witness: binary, README,
#                                              example env file, systemd unit
#   SHA256SUMS
# Versions come from Cargo metadata (the workspace version, which is also
# what pdb_version() returns); the library and the witness from the release
# build, which cargo reuses when it is up to date.
#
# Options:
#   --out DIR     write the packages there instead of dist/
#   --no-build    package the existing release build as it is, without
#                 set-up or cargo build (the test suite uses this: it runs
#                 beside tests that use those files)
set -euo pipefail

out=dist
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || { echo "package.sh: --out needs a directory" >&2; exit 2; }
      out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "package.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for tool in python3 npm strip objdump tar gzip sha256sum; do
  command -v "$tool" >/dev/null || { echo "package.sh: $tool is needed (scripts/setup.sh installs the rest)" >&2; exit 1; }
done
mkdir -p "$out"
out="$(cd "$out" && pwd)"
cd "$(dirname "$0")/.."

if [ "$build" = 1 ]; then
  scripts/setup.sh
  # The whole workspace, so features unify with the test build (no rebuild).
  cargo build --release --workspace
fi

# Versions and the target directory from Cargo; the target from rustc.
read -r version witness_version target_dir < <(
  cargo metadata --no-deps --format-version 1 | python3 -c '
import json, sys
m = json.load(sys.stdin)
v = {p["name"]: p["version"] for p in m["packages"]}
print(v["pdb-extension"], v["pdb-witness"], m["target_directory"])'
)
[ -n "${target_dir:-}" ] || { echo "package.sh: cargo metadata gave no versions" >&2; exit 1; }
target="$(rustc -vV | sed -n 's/^host: //p')"
release="$target_dir/release"

# What each package format calls this platform. Only glibc Linux is
# packaged; docs/packaging.md says what other platforms need.
case "$target" in
  x86_64-unknown-linux-gnu) wheel_platform=linux_x86_64; npm_cpu=x64 ;;
  aarch64-unknown-linux-gnu) wheel_platform=linux_aarch64; npm_cpu=arm64 ;;
  *) echo "package.sh: no package mapping for target $target (see docs/packaging.md)" >&2; exit 1 ;;
esac

for f in libpdb.so pdb-witness; do
  [ -f "$release/$f" ] || {
    echo "package.sh: $release/$f is missing: build first (cargo build --release --workspace)" >&2
    exit 1
  }
done

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

# Shipped without DWARF debug info (symbols stay): 13 MB -> 2 MB for the
# library. The file name stays libpdb.so: SQLite derives sqlite3_pdb_init
# from it.
strip --strip-debug -o "$stage/libpdb.so" "$release/libpdb.so"
strip --strip-debug -o "$stage/pdb-witness" "$release/pdb-witness"
chmod 0755 "$stage/libpdb.so" "$stage/pdb-witness"

# The newest versioned glibc symbol each binary uses = the oldest glibc it runs on.
glibc_needed() { objdump -T "$1" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1; }
lib_glibc="$(glibc_needed "$stage/libpdb.so")"
witness_glibc="$(glibc_needed "$stage/pdb-witness")"
revision="$(git describe --always --dirty 2>/dev/null || echo unknown)"
# Archive timestamps: the last commit's time, so rebuilding the same tree gives the same bytes.
epoch="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"

rm -f "$out"/personaldb-*.whl "$out"/personaldb-*.tgz "$out"/pdb-witness-*.tar.gz "$out"/SHA256SUMS

# Python wheel (standard library only: nothing from PyPI).
wheel="$(python3 packages/python/build_wheel.py --version "$version" \
  --plat-tag "$wheel_platform" --lib "$stage/libpdb.so" --out "$out")"

# npm tarball: the template in packages/node, with the version and the
# platform fields filled in here.
mkdir "$stage/node"
cp packages/node/package.json packages/node/index.js packages/node/index.d.ts \
  packages/node/README.md "$stage/libpdb.so" "$stage/node/"
(
  cd "$stage/node"
  npm pkg set "version=$version" "os[0]=linux" "cpu[0]=$npm_cpu" "libc[0]=glibc"
  npm pkg delete private devDependencies
  npm pack --pack-destination "$out" --loglevel=error >/dev/null
)
tarball="$out/personaldb-$version.tgz"
[ -f "$tarball" ] || { echo "package.sh: npm pack did not write $tarball" >&2; exit 1; }

# Witness release archive.
name="pdb-witness-$witness_version-$target"
mkdir "$stage/$name"
cp "$stage/pdb-witness" "$stage/$name/"
cp packages/witness/README.md packages/witness/pdb-witness.env \
  packages/witness/pdb-witness.service "$stage/$name/"
chmod 0644 "$stage/$name/README.md" "$stage/$name/pdb-witness.env" "$stage/$name/pdb-witness.service"
cat >>"$stage/$name/README.md" <<EOF

## This build

- version $witness_version, git revision $revision
- target $target: Linux with glibc $witness_glibc or newer
EOF
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
  -C "$stage" -cf - "$name" | gzip -9n >"$out/$name.tar.gz"

(cd "$out" && sha256sum "$(basename "$wheel")" "$(basename "$tarball")" "$name.tar.gz" >SHA256SUMS)

echo "package.sh: version $version for $target (library needs glibc $lib_glibc+, witness $witness_glibc+), in $out:"
(cd "$out" && ls -l "$(basename "$wheel")" "$(basename "$tarball")" "$name.tar.gz" SHA256SUMS)
