#!/usr/bin/env bash
# Options::bucket_cap_autotune against fixed caps on the simulated cluster (docs/performance.md,
# "Bucket-cap autotune on the shaped link"): one rank per host, one compute thread per rank,
# the in-place path off as in the bucket-cap sweep (scripts/cluster/bench.sh). Each round runs
# ddp_bench once per setting, in turn: the default cap (25 MiB), the sweep's best fixed cap,
# and --bucket-cap-mb auto (the warm-up goes on until the cap is chosen, so every timed step
# runs with it). Prints each run's step time and, for auto, the chosen cap; then the medians
# over rounds and auto / best.
#
#   scripts/cluster/autotune.sh [OUT_DIR]     (default BUILD_DIR/bench-autotune)
#
# Settings: MODEL (resnet), BEST (the sweep's best fixed cap: 1 for resnet, 4 for mlp),
# RATE (1gbit), HOSTS (2), ROUNDS (3), ITERATIONS (20 timed steps), BUILD_DIR (build).
# Needs root, as scripts/cluster.sh does.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${BUILD_DIR:-$root/build}
out=${1:-$build/bench-autotune}
cluster="$root/scripts/cluster.sh"
name=autotune
model=${MODEL:-resnet}
best=${BEST:-$([ "$model" = mlp ] && echo 4 || echo 1)}
mkdir -p "$out"
export OMP_NUM_THREADS=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
export OMPI_MCA_btl_tcp_flags=${OMPI_MCA_btl_tcp_flags:-send,inplace,need-ack,need-csum,hetero-rdma}
export DDP_LOG_LEVEL=${DDP_LOG_LEVEL:-INFO} # rank 0's line naming the choice and the medians
[ -x "$build/bench/ddp_bench" ] || { echo "autotune.sh: no $build/bench/ddp_bench: scripts/build.sh first" >&2; exit 2; }
trap '"$cluster" --name "$name" down >/dev/null 2>&1 || true' EXIT
"$cluster" --name "$name" --hosts "${HOSTS:-2}" --rate "${RATE:-1gbit}" up
echo "autotune.sh: model $model, caps 25 (default), $best (sweep's best), auto; ${ROUNDS:-3} rounds;" \
     "$(env | grep '^OMPI_MCA_' | sort | tr '\n' ' ')libddp $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  | tee "$out/conditions.txt"
for round in $(seq "${ROUNDS:-3}"); do
  for cap in 25 "$best" auto; do
    json="$out/${model}_${cap}_round${round}.json"
    "$cluster" --name "$name" mpirun -np "${HOSTS:-2}" --bind-to none "$build/bench/ddp_bench" --model "$model" \
      --mode ddp --in-place-min-mb 0 --bucket-cap-mb "$cap" --iterations "${ITERATIONS:-20}" --link-dev eth0 \
      --json "$json" > "$out/${model}_${cap}_round${round}.txt" 2>&1
    grep -E "chose bucket_cap_mb" "$out/${model}_${cap}_round${round}.txt" | sed "s/^/[round $round cap $cap] /" || true
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1]))["results"][0]; print("[round %s cap %s] median %.2f ms, %d buckets, chosen %g" % (sys.argv[2], sys.argv[3], r["median_ms"], r["buckets"], r["autotuned_bucket_cap_mb"]))' \
      "$json" "$round" "$cap"
  done
done
python3 - "$out" "$model" "$best" <<'PY'
import glob, json, statistics, sys
out, model, best = sys.argv[1:4]
rows = {}
for cap in ("25", best, "auto"):
    runs = [json.load(open(p))["results"][0] for p in sorted(glob.glob(f"{out}/{model}_{cap}_round*.json"))]
    rows[cap] = runs
med = {cap: statistics.median(r["median_ms"] for r in runs) for cap, runs in rows.items()}
print(f"\n| setting | step ms per round | median | buckets | chosen cap |")
print("| --- | --- | ---: | ---: | --- |")
for cap, runs in rows.items():
    label = {"25": "default (25 MiB)", best: f"sweep's best ({best} MiB)", "auto": "autotune"}[cap]
    chosen = ", ".join(f"{r['autotuned_bucket_cap_mb']:g}" for r in runs) if cap == "auto" else "-"
    steps = ", ".join("%.2f" % r["median_ms"] for r in runs)
    buckets = ", ".join(str(r["buckets"]) for r in runs)
    print(f"| {label} | {steps} | {med[cap]:.2f} | {buckets} | {chosen} |")
ratio = med["auto"] / med[best]
print(f"\nauto / best fixed = {ratio:.3f} ({'within' if ratio <= 1.05 else 'NOT within'} 5 %); "
      f"auto / default = {med['auto'] / med['25']:.3f}")
PY
