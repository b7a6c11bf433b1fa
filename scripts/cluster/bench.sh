#!/usr/bin/env bash
# The network-bound benchmark of docs/performance.md ("On a simulated cluster"): one rank
# per host of a scripts/cluster.sh cluster, one compute thread per rank. At each rate,
# bench/compare_torch.py --cluster (PyTorch DDP over gloo launched torchrun-style, libddp
# and its naive loop under mpirun over TCP, alternating A B per round); then the
# bucket-cap sweep of ddp_bench on the shaped link (CSV + PNG).
#
#   scripts/cluster/bench.sh [OUT_DIR]          (default BUILD_DIR/bench-cluster)
#
# Settings: RATES ("1gbit 10gbit"; "" skips the comparison), HOSTS (2), MODELS (mlp,resnet), ROUNDS (3),
# ITERATIONS (30 timed steps per mode), SWEEP_RATE (1gbit; "" skips the sweep),
# SWEEP_MODEL (mlp), SWEEP_CAPS (0.5,1,2,4,8,16,32), SWEEP_PASSES (2), BUILD_DIR (build),
# WAIT_RATES ("": skipped; e.g. "1gbit 10gbit": DDP_MPI_WAIT=spin against sleep).
# Open MPI: OMPI_MCA_mpi_yield_when_idle=1, and the TCP transport without its emulated
# RDMA put (OMPI_MCA_btl_tcp_flags without "put"), which halved the throughput of
# repeated all-reduces of separate buffers on the shaped links; TCP_PUT=on keeps Open
# MPI's default (docs/performance.md shows both). WAIT_QUIET_S=N waits up to N s before
# each part for the CPUs to be idle. Needs root, as scripts/cluster.sh does.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
# scripts/setup.sh's virtual environment (torch for compare_torch.py) first on PATH.
source "$root/scripts/venv.sh"
ddp_use_venv
out=${1:-$build/bench-cluster}
cluster="$root/scripts/cluster.sh"
name=bench
mkdir -p "$out"

export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
if [ "${TCP_PUT:-off}" = off ]; then
  export OMPI_MCA_btl_tcp_flags=${OMPI_MCA_btl_tcp_flags:-send,inplace,need-ack,need-csum,hetero-rdma}
fi
[ -x "$build/bench/ddp_bench" ] || { echo "bench.sh: no $build/bench/ddp_bench: scripts/build.sh first" >&2; exit 2; }

# Benchmarks share this machine's cores with whatever else runs: measure how busy the
# CPUs are just before each part (no cluster job runs then) and write it down.
busy_pct() { # CPU time used by anything, in % of all cores, over 3 s
  local a b
  read -r _ u n s i w x y z _ </proc/stat; a=($((u + n + s + x + y + z)) $((u + n + s + i + w + x + y + z)))
  sleep 3
  read -r _ u n s i w x y z _ </proc/stat; b=($((u + n + s + x + y + z)) $((u + n + s + i + w + x + y + z)))
  echo $((100 * (b[0] - a[0]) / (b[1] - a[1])))
}
wait_quiet() { # up to WAIT_QUIET_S seconds for the CPUs to be idle (< 10 % busy)
  local until=$((SECONDS + ${WAIT_QUIET_S:-0}))
  while (($(busy_pct) >= 10 && SECONDS < until)); do sleep 7; done
}
note() {
  echo "[$1] $(date -u +%FT%TZ) load average $(cut -d' ' -f1-3 /proc/loadavg); CPUs $(busy_pct)% busy (3 s sample), compilers running: $(pgrep -c -x cc1plus)" \
    | tee -a "$out/conditions.txt"
}

trap '"$cluster" --name "$name" down >/dev/null 2>&1 || true' EXIT
echo "bench.sh: one compute thread per rank (OMP_NUM_THREADS=1, torch::set_num_threads(1)), one rank per host;" \
     "$(env | grep '^OMPI_MCA_' | sort | tr '\n' ' ');" \
     "libddp ${LIBDDP_REV:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')}" | tee "$out/conditions.txt"

for rate in ${RATES-1gbit 10gbit}; do
  "$cluster" --name "$name" --hosts "${HOSTS:-2}" --rate "$rate" up
  wait_quiet
  note "compare $rate start"
  python3 "$root/bench/compare_torch.py" --cluster "$name" --models "${MODELS:-mlp,resnet}" \
    --rounds "${ROUNDS:-3}" --iterations "${ITERATIONS:-30}" --bench "$build/bench/ddp_bench" \
    --markdown --json-out "$out/compare_$rate.json" | tee "$out/compare_$rate.md"
  note "compare $rate end"
done

# How the MPI thread waits (docs/threads.md): DDP_MPI_WAIT=spin (blocking MPI calls)
# against sleep (auto's choice for one rank per host), alternating per round, libddp only.
for rate in ${WAIT_RATES-}; do
  "$cluster" --name "$name" --hosts "${HOSTS:-2}" --rate "$rate" up
  wait_quiet
  note "wait $rate start"
  for round in $(seq "${ROUNDS:-3}"); do
    for wait in spin sleep; do
      echo "== $rate round $round DDP_MPI_WAIT=$wait" | tee -a "$out/wait_$rate.txt"
      DDP_MPI_WAIT=$wait "$cluster" --name "$name" mpirun -np "${HOSTS:-2}" --bind-to none "$build/bench/ddp_bench" \
        --model "${MODELS:-mlp,resnet}" --mode local,ddp --iterations "${ITERATIONS:-30}" --link-dev eth0 \
        | grep -E '^model|^(local|ddp) |collectives' | tee -a "$out/wait_$rate.txt"
    done
  done
  note "wait $rate end"
done

if [ -n "${SWEEP_RATE-1gbit}" ]; then
  rate=${SWEEP_RATE:-1gbit}
  "$cluster" --name "$name" --hosts "${HOSTS:-2}" --rate "$rate" up
  wait_quiet
  note "sweep $rate start"
  # In-place reduction off, so that every gradient goes through a bucket and the cap
  # decides the message sizes (with it on, mlp's weights are reduced one by one).
  "$cluster" --name "$name" mpirun -np "${HOSTS:-2}" --bind-to none "$build/bench/ddp_bench" \
    --model "${SWEEP_MODEL:-mlp}" --in-place-min-mb 0 --sweep "${SWEEP_CAPS:-0.5,1,2,4,8,16,32}" \
    --sweep-passes "${SWEEP_PASSES:-2}" --iterations "${SWEEP_ITERATIONS:-20}" --link-dev eth0 \
    --sweep-out "$out/cluster_bucket_cap_sweep" --sweep-label "${HOSTS:-2} hosts, $rate links" \
    | tee "$out/sweep_$rate.txt"
  note "sweep $rate end"
fi
echo "bench.sh: results in $out"
