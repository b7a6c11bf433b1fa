#!/usr/bin/env bash
# A/B: two builds of ddp_bench (and their libddp) in alternating rounds on the same
# machine, so that drift in the machine's speed hits both alike. Prints each round's
# median step (ms) per model and mode, then the median over rounds and the ratio B/A.
#
#   bench/ab_compare.sh DIR_A DIR_B [ROUNDS] [ddp_bench args...]
# DIR_X holds ddp_bench and libddp.so* (copied from a build: cp build/libddp.so* \
# build/bench/ddp_bench DIR_X/); it goes first on LD_LIBRARY_PATH, ahead of the binary's
# RUNPATH. Defaults: 5 rounds of --model mlp,small --mode local,ddp, 2 ranks, one compute
# thread each (OMP_NUM_THREADS=1), as scripts/bench.sh runs them.
set -euo pipefail
a=$(cd "$1" && pwd); b=$(cd "$2" && pwd)
rounds=${3:-5}
shift 3 || shift $#
args=("$@")
((${#args[@]})) || args=(--model mlp,small --mode local,ddp)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
out=$(mktemp -d)
echo "ab_compare: A=$a B=$b, $rounds rounds of ${args[*]}, ${NP:-2} ranks, 1 compute thread per rank"
for ((r = 1; r <= rounds; r++)); do
  for side in A B; do
    dir=$a; [ "$side" = B ] && dir=$b
    LD_LIBRARY_PATH="$dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
      mpirun --oversubscribe --bind-to none -np "${NP:-2}" "$dir/ddp_bench" "${args[@]}" \
      --json "$out/$side.$r.json" > "$out/$side.$r.log"
  done
  echo "round $r done"
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
runs = {}
for side in "AB":
    for r in range(1, rounds + 1):
        for res in json.load(open(f"{out}/{side}.{r}.json"))["results"]:
            runs.setdefault((res["model"], res["mode"]), {}).setdefault(side, []).append(res["median_ms"])
print(f"{'model':8} {'mode':8} {'A rounds (ms)':36} {'B rounds (ms)':36} {'A med':>8} {'B med':>8} {'B/A':>6}")
for (model, mode), sides in runs.items():
    ma, mb = statistics.median(sides["A"]), statistics.median(sides["B"])
    fa = " ".join(f"{x:.2f}" for x in sides["A"]); fb = " ".join(f"{x:.2f}" for x in sides["B"])
    print(f"{model:8} {mode:8} {fa:36} {fb:36} {ma:8.2f} {mb:8.2f} {mb/ma:6.3f}")
PY
