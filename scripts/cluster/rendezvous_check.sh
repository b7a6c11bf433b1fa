#!/usr/bin/env bash
# The torchrun-style and Slurm-style launches of scripts/cluster.sh, checked with
# libddp's own rendezvous (tests/cluster/rendezvous_probe.cpp): every rank must find
# rank 0 over TCP at node0's cluster address (never loopback), with the rank, world
# size and local rank its launcher set. Exit 77 where namespaces are not available.
#
#   scripts/cluster/rendezvous_check.sh PROBE
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
probe=${1:?usage: $0 PATH/TO/ddp_rendezvous_probe}
out=$(mktemp)
trap 'rm -f "$out"' EXIT

check() { # check NAME HOSTS LAUNCH PER_HOST
  local name=$1 hosts=$2 launch=$3 per_host=$4 world rc=0
  world=$((hosts * per_host))
  "$here/ctest.sh" "$name" "$hosts" "$launch" "$per_host" -- "$probe" >"$out" 2>&1 || rc=$?
  cat "$out"
  ((rc == 77)) && exit 77
  ((rc == 0)) || { echo "FAILED: the $launch launch exited with status $rc"; exit 1; }
  for ((r = 0; r < world; r++)); do
    local node=$((r / per_host)) local_rank=$((r % per_host))
    grep -q "^probe: rank $r/$world local $local_rank on node$node via tcp://10.213.0.1:[0-9]* .*: rank 0 is node0$" "$out" || {
      echo "FAILED: the $launch launch: no line for rank $r/$world (local $local_rank on node$node, rendezvous at 10.213.0.1)"
      exit 1
    }
  done
  echo "ok: $launch launch, $world ranks on $hosts hosts found rank 0 at 10.213.0.1"
}

check ctrv 3 env 1      # torchrun-style: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
check ctrv 2 slurm 2    # srun-style: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID (+ MASTER_*)
