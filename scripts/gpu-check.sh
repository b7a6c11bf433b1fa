#!/usr/bin/env bash
# The GPU check (docs/gpu-check.md): on a machine with a CUDA GPU and the PyPI torch wheel,
# builds libddp against that torch (NCCL from the wheel's nvidia-nccl) into build-gpu/, with
# both NCCL paths: libddp's own `nccl` and `c10d-nccl` (PyTorch's ProcessGroupNCCL under
# libddp's reducer, -DDDP_WITH_C10D_NCCL=ON). It runs, on ONE GPU:
#   - the gpu tests at world 1 and 2 on each NCCL path (world 2: each rank its own
#     NCCL_HOSTID), and the CUDA reducer tests at world 2 and 3 over the MPI backend (CUDA
#     tensors staged through host memory; several ranks share the GPU): ctest -L gpu. The
#     reducer tests check DDP's gradients against single-process autograd on CUDA;
#   - ddp_bench at world 1 and 2 on each NCCL path, side by side in the summary, then
#     bench/compare_torch.py (PyTorch DDP with NCCL against libddp's nccl, same model):
#     step time, overhead over no DDP, host time in hooks and finalize.
# The steps that compare the two NCCL paths come first after the build, the slow
# comparison with PyTorch DDP last, so that a run cut short by TOTAL_LIMIT keeps them.
# What the machine lacks (Catch2, an MPI) comes from .gpu-carry/, which scripts/gpu-carry.sh
# fills on the dev machine and the device tool carries along.
#
# Nothing is skipped into a pass: a step that cannot run (no CUDA device, no Catch2, no
# MPI, a target that did not build, a test that reports Skipped, no time left) fails the
# script. Without a visible CUDA device it stops before building, with "no CUDA device".
# Every step runs under its own time limit, cut to what is left of TOTAL_LIMIT (480 s);
# after a failed step the script goes on, so one run collects every log. Exit status is
# non-zero if any step failed. Files (at most 8: the device tool brings back no more):
#   $OUT/gpu-check.log   everything, as printed      $OUT/summary.txt  the summary table
#   $OUT/logs.tar.gz     one log per step, CMakeCache.txt, every bench JSON (c10d-nccl's too)
#   $OUT/*.json          ddp_bench on nccl (world 1, 2) and compare_torch.py (world 1, 2)
# OUT unset: build-gpu/gpu-check-out/.
#
#   scripts/gpu-check.sh                          # from anywhere
#   GPU_CHECK_BUILD_ONLY=1 scripts/gpu-check.sh   # no GPU needed: configure, build, and
#                                                 # run the CPU mpi tests' [pg]~[gloo] at world 2
#                                                 # and the unit tests' [c10d-nccl] (no GPU)
#   BUILD_DIR=build-x JOBS=8 ITERATIONS=50 BENCH_MODELS=mlp,small ROUNDS=2 TOTAL_LIMIT=480 \
#     BUILD_LIMIT=360 GPU_CARRY_DIR=.gpu-carry scripts/gpu-check.sh
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
BUILD_DIR=${BUILD_DIR:-build-gpu}
BUILD="$ROOT/$BUILD_DIR"
JOBS=${JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
ITERATIONS=${ITERATIONS:-50}
BENCH_MODELS=${BENCH_MODELS:-mlp,small}
ROUNDS=${ROUNDS:-2}
TOTAL_LIMIT=${TOTAL_LIMIT:-480}
# The build's own limit. With 16 cores and no ccache, an estimate from the dev machine's
# per-file times is 3-4 minutes (the precompiled torch header, then the slowest test file);
# a rehearsal on 2 cores needs more, with TOTAL_LIMIT.
BUILD_LIMIT=${BUILD_LIMIT:-360}
BUILD_ONLY=${GPU_CHECK_BUILD_ONLY:-0}
CARRY=${GPU_CARRY_DIR:-$ROOT/.gpu-carry}
OUT_DIR=${OUT:-$BUILD/gpu-check-out}
LOG_DIR="$BUILD/gpu-check-logs"
AUX="$BUILD/gpu-check-aux"
COMBINED="$OUT_DIR/gpu-check.log"
START=$(date +%s)

mkdir -p "$OUT_DIR" "$LOG_DIR" "$AUX"
rm -f "$LOG_DIR"/*.log "$LOG_DIR"/*.json "$COMBINED" "$OUT_DIR/summary.txt" "$OUT_DIR"/*.json "$OUT_DIR/logs.tar.gz"

# Step name, status and seconds, for the summary; notes are the findings under it.
declare -a SUMMARY=()
declare -a NOTES=()
FAILED=0

say() { echo "$*" | tee -a "$COMBINED"; }

# run_step NAME LIMIT_SECONDS COMMAND...: runs COMMAND under `timeout`, its output to the
# terminal, $LOG_DIR/NAME.log and the combined log; records the outcome and goes on.
# Returns COMMAND's status.
run_step() {
  local name=$1 limit=$2
  shift 2
  local log="$LOG_DIR/$name.log" t0 rc status left
  t0=$(date +%s)
  left=$((START + TOTAL_LIMIT - t0 - 5))
  if ((left < 10)); then
    not_run "$name" "no time left of TOTAL_LIMIT=${TOTAL_LIMIT}s"
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "==> $name (limit ${limit}s): $*" | tee "$log" | tee -a "$COMBINED"
  if declare -F "$1" >/dev/null; then
    # A function of this script (quick checks): `timeout` cannot run it.
    "$@" 2>&1 | tee -a "$log" "$COMBINED"
  else
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log" "$COMBINED"
  fi
  rc=${PIPESTATUS[0]}
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT after ${limit}s"; FAILED=1 ;;
    *) status="FAILED (exit $rc)"; FAILED=1 ;;
  esac
  SUMMARY+=("$name|$status|$(($(date +%s) - t0))")
  echo "<== $name: $status" | tee -a "$log" "$COMBINED"
  return "$rc"
}

# A step that could not run fails the check.
not_run() {
  local name=$1 why=$2
  echo "==> $name: NOT RUN (counts as a failure): $why" | tee "$LOG_DIR/$name.log" | tee -a "$COMBINED"
  SUMMARY+=("$name|NOT RUN: $why|0")
  FAILED=1
}

# ctest_step NAME LIMIT REGEX: the ctest entries matching REGEX, verbose; fails when none
# matches and when any reports Skipped (a gpu binary that exits 77 under DDP_REQUIRE_GPU).
ctest_step() {
  local name=$1 limit=$2 regex=$3
  if [[ ! -x "$BUILD/tests/gpu/ddp_gpu_tests" ]]; then
    not_run "$name" "ddp_gpu_tests was not built"
    return 1
  fi
  run_step "$name" "$limit" bash -c "cd '$BUILD' && ctest -R '$regex' -V --no-tests=error --timeout $((limit - 10)) \
    > '$AUX/$name.ctest' 2>&1; rc=\$?; cat '$AUX/$name.ctest'; \
    if grep -Eq '\\*\\*\\*Skipped|Not Run' '$AUX/$name.ctest'; then echo 'gpu-check: a test reported Skipped or Not Run: that is a failure here'; exit 1; fi; exit \$rc"
}

finish() {
  local rc=$?
  ((rc != 0)) && FAILED=1
  {
    echo
    echo "gpu-check summary ($(($(date +%s) - START)) s of TOTAL_LIMIT=${TOTAL_LIMIT}; logs in $OUT_DIR)"
    printf '%-18s | %-52s | %s\n' "step" "status" "seconds"
    printf '%-18s-+-%-52s-+-%s\n' "------------------" "----------------------------------------------------" "-------"
    local row name status secs note
    for row in "${SUMMARY[@]}"; do
      IFS='|' read -r name status secs <<<"$row"
      printf '%-18s | %-52s | %s\n' "$name" "$status" "$secs"
    done
    for note in "${NOTES[@]}"; do echo "$note"; done
    if ((FAILED)); then echo "gpu-check: FAILED"; else echo "gpu-check: all steps passed"; fi
  } | tee "$OUT_DIR/summary.txt" | tee -a "$COMBINED"
  cp -f "$BUILD/CMakeCache.txt" "$LOG_DIR/" 2>/dev/null
  cp -f "$OUT_DIR"/*.json "$LOG_DIR/" 2>/dev/null
  tar -C "$BUILD" -czf "$OUT_DIR/logs.tar.gz" gpu-check-logs 2>/dev/null
  exit "$FAILED"
}
trap finish EXIT

say "gpu-check: $(date -u +%Y-%m-%dT%H:%M:%SZ) in $ROOT (commit $(git rev-parse --short HEAD 2>/dev/null || echo '?: no git here'))," \
  "BUILD_DIR=$BUILD_DIR JOBS=$JOBS TOTAL_LIMIT=$TOTAL_LIMIT GPU_CHECK_BUILD_ONLY=$BUILD_ONLY"

# --- what the machine has, and the carried folder ---------------------------------------
# The carried Open MPI: its bin/ launchers find their own prefix; OPAL_PREFIX says it to
# the ranks too. Its libraries are found through the RUNPATHs the build records.
MPI_ARGS=()
if [[ -x "$CARRY/openmpi/bin/mpirun" ]]; then
  export PATH="$CARRY/openmpi/bin:$PATH"
  export OPAL_PREFIX="$CARRY/openmpi"
  export LD_LIBRARY_PATH="$CARRY/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  MPI_ARGS=(-DMPI_CXX_COMPILER="$CARRY/openmpi/bin/mpicxx" -DMPIEXEC_EXECUTABLE="$CARRY/openmpi/bin/mpirun")
fi
CATCH2_ARGS=()
if [[ -f "$CARRY/catch2/lib/cmake/Catch2/Catch2Config.cmake" ]]; then
  CATCH2_ARGS=(-DCatch2_DIR="$CARRY/catch2/lib/cmake/Catch2")
fi
# mpirun refuses root without these (Open MPI 4 and 5 alike); the ranks of one machine
# talk through shared memory (TCP on loopback as the fallback), never through a NIC.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_pml=${OMPI_MCA_pml:-ob1} OMPI_MCA_btl=${OMPI_MCA_btl:-self,sm,tcp}
export OMPI_MCA_btl_tcp_if_include=${OMPI_MCA_btl_tcp_if_include:-lo}
export PYTHONUNBUFFERED=1
# ccache, where there is one, hits across build folders and checkouts.
export CCACHE_BASEDIR=${CCACHE_BASEDIR:-$ROOT} CCACHE_NOHASHDIR=${CCACHE_NOHASHDIR:-1}
# The gpu binaries fail instead of skipping without a GPU (tests/gpu/main.cpp).
((BUILD_ONLY)) || export DDP_REQUIRE_GPU=1

machine() {
  local bad=0 f
  echo "kernel: $(uname -srm); cores: $(nproc)"
  command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "nvidia-smi: not found or no device"
  "$PYTHON" -c 'import sys, torch; print("python", sys.version.split()[0], sys.executable); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count()); print("nccl", ".".join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else "?")' ||
    { echo "MISSING: $PYTHON cannot import torch"; bad=1; }
  command -v cmake >/dev/null && cmake --version | head -n 1 || { echo "MISSING: cmake"; bad=1; }
  command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "ninja: not found (make instead)"
  command -v c++ >/dev/null && c++ --version | head -n 1 || { echo "MISSING: c++"; bad=1; }
  (command -v nvcc && nvcc --version | tail -n 2) || echo "nvcc: not on PATH (CMake's CUDAToolkit may still find /usr/local/cuda)"
  if [[ -f "$CARRY/MANIFEST" ]]; then
    echo "carried ($CARRY, $(du -sh "$CARRY" | cut -f1)):"
    sed -n 1,2p "$CARRY/MANIFEST"
  else
    echo "no carried folder at $CARRY (scripts/gpu-carry.sh fills it; name it in the device tool's carry)"
  fi
  f=$(command -v mpirun) && echo "mpirun: $f ($(mpirun --version 2>/dev/null | head -n 1))" ||
    { echo "MISSING: mpirun (no MPI: run scripts/gpu-carry.sh and carry .gpu-carry)"; bad=1; }
  command -v mpicxx >/dev/null || { echo "MISSING: mpicxx"; bad=1; }
  if [[ ${#CATCH2_ARGS[@]} -eq 0 && ! -f /usr/include/catch2/catch.hpp ]]; then
    echo "MISSING: Catch2 (catch2/catch.hpp): run scripts/gpu-carry.sh and carry .gpu-carry"
    bad=1
  fi
  return $bad
}
run_step machine 60 machine

# --- a CUDA device, before spending minutes on a build ------------------------------------
if ((!BUILD_ONLY)); then
  cat >"$AUX/cuda_device.py" <<'EOF'
import sys, torch
if not torch.cuda.is_available() or torch.cuda.device_count() == 0:
    print("gpu-check: FAILED: no CUDA device visible to torch (torch.cuda.is_available() is %s)" % torch.cuda.is_available())
    sys.exit(1)
x = torch.ones(1 << 20, device="cuda")
torch.cuda.synchronize()
print("CUDA device:", torch.cuda.get_device_name(0), "- a kernel ran:", x.sum().item() == float(1 << 20))
EOF
  if ! run_step cuda-device 90 "$PYTHON" "$AUX/cuda_device.py"; then
    say "gpu-check: FAILED: no CUDA device usable here; nothing was built or run (GPU_CHECK_BUILD_ONLY=1 builds without one)"
    exit 1
  fi
fi

# --- configure and build -----------------------------------------------------------------
GENERATOR=()
KEEP_GOING=(-k)
if command -v ninja >/dev/null && [[ ! -f "$BUILD/Makefile" ]]; then
  GENERATOR=(-G Ninja)
  KEEP_GOING=(-k 0)
fi
[[ -f "$BUILD/build.ninja" ]] && KEEP_GOING=(-k 0)
# torch's CMake files compile and run a CUDA program to detect the GPU's architecture when
# this is unset; libddp compiles no CUDA code, so any value will do and saves that.
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
run_step configure 180 cmake "${GENERATOR[@]}" -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
  -DDDP_WITH_NCCL=ON -DDDP_WITH_C10D_NCCL=ON -DDDP_WITH_MPI=ON -DDDP_BUILD_TESTS=ON -DDDP_BUILD_BENCH=ON -DDDP_BUILD_EXAMPLES=OFF \
  -DPython3_EXECUTABLE="$(command -v "$PYTHON")" "${MPI_ARGS[@]}" "${CATCH2_ARGS[@]}"
CONFIGURED=$?

if ((CONFIGURED == 0)); then
  # Everything (every test binary, the bench), going on past a target that fails, so that
  # one broken target still leaves the others.
  run_step build "$BUILD_LIMIT" cmake --build "$BUILD" -j "$JOBS" -- "${KEEP_GOING[@]}"
  run_step ctest-list 30 bash -c "cd '$BUILD' && ctest -N -L gpu | tee '$AUX/gpu-tests.list' && \
    for t in gpu_tests gpu_abort_test gpu_c10d_nccl_tests gpu_mpi_np2_reducer gpu_mpi_np3_reducer gpu_nccl_np2 \
             gpu_c10d_nccl_np2; do \
      grep -q \": \$t\$\" '$AUX/gpu-tests.list' || { echo \"gpu-check: ctest -L gpu lacks \$t\"; exit 1; }; done"
else
  not_run build "configure failed"
fi

# --- the carried MPI runs: the CPU multi-process tests' [pg] at world 2 --------------------
# ~[gloo]: the gloo cases need MASTER_ADDR/MASTER_PORT, which ctest's gloo entries set.
if [[ -x "$BUILD/tests/ddp_mpi_tests" ]]; then
  run_step mpi-cpu-np2 90 env DDP_TIMEOUT_S=60 DDP_TEST_TIMEOUT_S=60 OMP_NUM_THREADS=1 \
    mpirun --oversubscribe --bind-to none -np 2 "$BUILD/tests/ddp_mpi_tests" "[pg]~[gloo]" --warn NoTests --use-colour no
else
  not_run mpi-cpu-np2 "ddp_mpi_tests was not built"
fi

if ((BUILD_ONLY)); then
  # Without a GPU, c10d-nccl must refuse with the cause (tests/unit/init_test.cpp).
  if [[ -x "$BUILD/tests/ddp_unit_tests" ]]; then
    run_step unit-c10d-nccl 60 "$BUILD/tests/ddp_unit_tests" "[c10d-nccl]" --warn NoTests --use-colour no
  else
    not_run unit-c10d-nccl "ddp_unit_tests was not built"
  fi
  say "gpu-check: GPU_CHECK_BUILD_ONLY=1: built; no GPU step runs"
  exit "$FAILED"
fi

# --- the two NCCL paths side by side, world 1 -------------------------------------------------
# Cheapest first: every step of a GPU job pays CUDA's and NCCL's start-up.
BENCH="$BUILD/bench/ddp_bench"
BENCH_ARGS=(--device cuda --model "$BENCH_MODELS" --iterations "$ITERATIONS")
ctest_step gpu-np1-nccl 150 '^gpu_(tests|abort_test)$'
ctest_step gpu-np1-c10d-nccl 120 '^gpu_c10d_nccl_tests$'
if [[ -x "$BENCH" ]]; then
  run_step ddp-bench-np1 90 "$BENCH" --backend nccl "${BENCH_ARGS[@]}" --json "$OUT_DIR/ddp-bench-np1.json"
  # c10d-nccl's JSON goes with the logs (logs.tar.gz): $OUT holds at most 8 files.
  run_step ddp-bench-np1-c10d 90 "$BENCH" --backend c10d-nccl "${BENCH_ARGS[@]}" \
    --json "$LOG_DIR/ddp-bench-np1-c10d-nccl.json"
else
  for s in ddp-bench-np1 ddp-bench-np1-c10d; do not_run "$s" "bench/ddp_bench was not built"; done
fi

# --- world 2 on the one GPU, each NCCL path ----------------------------------------------------
# NCCL's own log of the communicator's set-up says whether it took both ranks on one GPU.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# nccl_verdict STEP RC: a finding under the summary, from the step's NCCL INFO log.
nccl_verdict() {
  local step=$1 rc=$2 log="$LOG_DIR/$1.log" inits why
  [[ -f "$log" ]] || return 0
  inits=$(grep -c "Init COMPLETE" "$log")
  if grep -q "Duplicate GPU" "$log"; then
    NOTES+=("$step: NCCL REFUSED two ranks on one GPU despite NCCL_HOSTID: $(grep -m1 'Duplicate GPU' "$log")")
  elif ((rc == 0)); then
    NOTES+=("$step: NCCL accepted two ranks on one GPU (a NCCL_HOSTID per rank, sockets on lo); the gpu tests passed at world 2 ($inits communicator inits completed)")
  elif ((inits >= 2)); then
    NOTES+=("$step: NCCL accepted two ranks on one GPU ($inits communicator inits completed), but the tests FAILED: see $step.log")
  else
    why=$(grep -m1 'NCCL WARN' "$log" || grep -v '^==>' "$log" | grep -m1 -E 'FAILED|NOT RUN|rror' || echo "see $step.log")
    NOTES+=("$step: FAILED before NCCL completed a two-rank communicator: $why")
  fi
}
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET ctest_step nccl-np2 150 '^gpu_nccl_np2$'
nccl_verdict nccl-np2 $?
NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET ctest_step c10d-nccl-np2 150 '^gpu_c10d_nccl_np2$'
nccl_verdict c10d-nccl-np2 $?

# World 2: each rank a host of its own for NCCL (tests/gpu/share_one_gpu.sh). ddp_bench goes
# through the script; PyTorch's ranks (started by compare_torch.py with RANK set) take
# their NCCL_HOSTID from a sitecustomize on PYTHONPATH, which then runs the one it hides.
cat >"$AUX/ddp_bench_share_one_gpu" <<EOF
#!/bin/sh
exec "$ROOT/tests/gpu/share_one_gpu.sh" "$BENCH" "\$@"
EOF
chmod +x "$AUX/ddp_bench_share_one_gpu"
if [[ -x "$BENCH" ]]; then
  run_step ddp-bench-np2 90 mpirun --oversubscribe --bind-to none -np 2 "$AUX/ddp_bench_share_one_gpu" \
    --backend nccl "${BENCH_ARGS[@]}" --json "$OUT_DIR/ddp-bench-np2-nccl.json"
  # c10d-nccl's ranks meet on a c10d store, not over MPI (mpirun only starts them): a fresh
  # FileStore, as a FileStore must not be left over from an earlier job.
  rm -f "$AUX/bench-c10d-nccl.store"
  run_step ddp-bench-np2-c10d 90 env DDP_INIT_METHOD="file://$AUX/bench-c10d-nccl.store" \
    mpirun --oversubscribe --bind-to none -np 2 "$AUX/ddp_bench_share_one_gpu" \
    --backend c10d-nccl "${BENCH_ARGS[@]}" --json "$LOG_DIR/ddp-bench-np2-c10d-nccl.json"
else
  for s in ddp-bench-np2 ddp-bench-np2-c10d; do not_run "$s" "bench/ddp_bench was not built"; done
fi

# --- the MPI backend on CUDA tensors -------------------------------------------------------
ctest_step gpu-mpi-np2-np3 180 '^gpu_mpi_np[23]_reducer$'

# --- libddp (nccl) against PyTorch DDP (NCCL), world 1 and 2, on the one GPU: last, slowest --
mkdir -p "$AUX/py"
cat >"$AUX/py/sitecustomize.py" <<'EOF'
# gpu-check.sh: a rank of PyTorch DDP sharing one GPU with the others gets a NCCL host id
# of its own (as tests/gpu/share_one_gpu.sh does for libddp), then the sitecustomize this
# file hides, if any, runs.
import os, sys
if os.environ.get("RANK"):
    os.environ["NCCL_HOSTID"] = os.environ.get("NCCL_HOSTID_PREFIX", "ddp-one-gpu-rank") + os.environ["RANK"]
_here = os.path.dirname(os.path.abspath(__file__))
for _p in sys.path:
    _f = os.path.join(_p or ".", "sitecustomize.py")
    if os.path.abspath(_p or ".") != _here and os.path.isfile(_f):
        exec(compile(open(_f).read(), _f, "exec"), {"__name__": "sitecustomize", "__file__": _f})
        break
EOF
ONE_GPU_NCCL_ENV=(NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 NCCL_NVLS_ENABLE=0)
COMPARE=("$PYTHON" "$ROOT/bench/compare_torch.py" --device cuda --models "$BENCH_MODELS" --iterations "$ITERATIONS"
  --rounds "$ROUNDS" --timeout 150 --mpirun mpirun)

if [[ -x "$BENCH" ]]; then
  run_step compare-np1 150 "${COMPARE[@]}" --np 1 --bench "$BENCH" --json-out "$OUT_DIR/compare-np1.json"
  run_step compare-np2 180 env "${ONE_GPU_NCCL_ENV[@]}" PYTHONPATH="$AUX/py${PYTHONPATH:+:$PYTHONPATH}" \
    "${COMPARE[@]}" --np 2 --bench "$AUX/ddp_bench_share_one_gpu" --json-out "$OUT_DIR/compare-np2.json"
else
  for s in compare-np1 compare-np2; do not_run "$s" "bench/ddp_bench was not built"; done
fi

# The numbers the issue asks for, from the JSON, under the summary table: each run, the two
# NCCL paths side by side, and libddp against PyTorch DDP.
if REPORT=$("$PYTHON" - "$OUT_DIR" "$LOG_DIR" <<'EOF'
import json, os, sys
dirs = sys.argv[1:]
lines = []
def load(name):
    for d in dirs:
        try:
            with open(os.path.join(d, name)) as f:
                return json.load(f)
        except (OSError, ValueError):
            continue
    return None
# ddp_bench's runs: (file, world label, path). nccl's files are in $OUT, c10d-nccl's in the logs.
RUNS = (("ddp-bench-np1.json", "world 1", "nccl"), ("ddp-bench-np1-c10d-nccl.json", "world 1", "c10d-nccl"),
        ("ddp-bench-np2-nccl.json", "world 2 (NCCL_HOSTID)", "nccl"),
        ("ddp-bench-np2-c10d-nccl.json", "world 2 (NCCL_HOSTID)", "c10d-nccl"))
steps = {}  # (world label, model) -> {path: (ddp ms, local ms)}
for name, label, path in RUNS:
    d = load(name)
    if not d:
        lines.append(f"bench {label} {path}: no result ({name} missing)")
        continue
    by = {(r["model"], r["mode"]): r for r in d["results"]}
    for model in dict.fromkeys(r["model"] for r in d["results"]):
        loc, ddp = by.get((model, "local")), by.get((model, "ddp"))
        if not (loc and ddp):
            continue
        steps.setdefault((label, model), {})[path] = (ddp["median_ms"], loc["median_ms"])
        host = ddp["finalize_ms"] - ddp["finalize_wait_ms"]
        lines.append(f"bench libddp {label} {d['backend']} {model}: step {ddp['median_ms']:.3f} ms, no DDP "
                     f"{loc['median_ms']:.3f} ms, overhead {100 * (ddp['median_ms'] / loc['median_ms'] - 1):.0f}%; "
                     f"hooks {ddp['hook_ms']:.3f} ms/step, finalize {ddp['finalize_ms']:.3f} ms/step "
                     f"(host {host:.3f}, waiting {ddp['finalize_wait_ms']:.3f})")
# The two NCCL paths side by side: the same reducer, libddp's NCCL against PyTorch's.
if steps:
    lines.append("NCCL paths side by side (ddp_bench median step; in brackets its overhead over the same run's "
                 "no-DDP step):")
    lines.append(f"  {'world':<22} | {'model':<8} | {'nccl (libddp)':<20} | {'c10d-nccl (PyTorch)':<20} | c10d/nccl")
    def cell(v):
        return f"{v[0]:.3f} ms ({100 * (v[0] / v[1] - 1):+.0f}%)" if v else "no result"
    for (label, model), by_path in steps.items():
        n, c = by_path.get("nccl"), by_path.get("c10d-nccl")
        ratio = f"{c[0] / n[0]:.2f}" if n and c else "-"
        lines.append(f"  {label:<22} | {model:<8} | {cell(n):<20} | {cell(c):<20} | {ratio}")
for name, label in (("compare-np1.json", "world 1"), ("compare-np2.json", "world 2 (NCCL_HOSTID)")):
    d = load(name)
    if not d:
        lines.append(f"compare {label}: no result ({name} missing)")
        continue
    for model, s in d["summary"].items():
        t, l = s["torch"], s["libddp"]
        lines.append(f"compare {label} {model}: PyTorch DDP {t['ddp']['median_ms']:.3f} ms (overhead "
                     f"{t['overhead_pct']:.0f}%), libddp {l['ddp']['median_ms']:.3f} ms (overhead {l['overhead_pct']:.0f}%); "
                     f"libddp/torch {s['step_ratio']:.2f}; libddp finalize {l['finalize_ms']:.3f} ms/step")
print("\n".join(lines))
EOF
); then
  while IFS= read -r line; do NOTES+=("$line"); done <<<"$REPORT"
else
  NOTES+=("bench report: could not read the JSON results")
fi

exit "$FAILED"
