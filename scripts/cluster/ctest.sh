#!/usr/bin/env bash
# A cluster ctest entry: bring up cluster NAME with HOSTS hosts (scripts/cluster.sh), run
# one command on it, remove it, whatever happened. Exit status 77 (ctest: Skipped), with
# the reason, where network namespaces cannot be created here.
#
#   scripts/cluster/ctest.sh NAME HOSTS LAUNCH PER_HOST -- CMD ARGS...
set -euo pipefail
cluster="$(cd "$(dirname "$0")/.." && pwd)/cluster.sh"
(($# >= 5)) || { echo "usage: $0 NAME HOSTS LAUNCH PER_HOST -- CMD ARGS..." >&2; exit 2; }
name=$1 hosts=$2 launch=$3 per_host=$4
shift 4
[ "$1" = -- ] && shift

"$cluster" --name "$name" down >/dev/null 2>&1 || true   # what a killed earlier run left
trap '"$cluster" --name "$name" down >/dev/null 2>&1 || true' EXIT
rc=0
"$cluster" --name "$name" --hosts "$hosts" up || rc=$?
if ((rc == 77)); then
  echo "SKIPPED: $name: network namespaces are not available on this machine (reason above)"
  exit 77
fi
((rc == 0)) || exit "$rc"
"$cluster" --name "$name" status
"$cluster" --name "$name" run --launch "$launch" --per-host "$per_host" -- "$@"
