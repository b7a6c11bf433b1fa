#!/bin/sh
# Runs a command with LibTorch's CPU kernels held to one instruction set, so that the
# gradient tests' tolerances (tests/support/world.h, reduction_tolerance) are exercised
# under every kernel variant an x86-64 machine may pick:
#
#   tests/run_with_isa.sh default|avx2|avx512 COMMAND [ARG...]
#
# Sets ATEN_CPU_CAPABILITY (ATen's own vectorised kernels: reductions, elementwise ops,
# softmax, BatchNorm) and caps MKL (MKL_ENABLE_INSTRUCTIONS: GEMMs) and oneDNN
# (ONEDNN_MAX_CPU_ISA: convolutions) at the same level; mpirun passes the environment to
# its local ranks. A CPU without the instruction set would make LibTorch fall back
# silently to a lower one, so the check is made here, at run time, on the machine that
# runs the test: without it the script prints "skipped: ..." and exits 77, which ctest
# reports as Skipped (SKIP_RETURN_CODE 77). Otherwise it execs the command and returns
# its status.
set -eu

if [ $# -lt 2 ]; then
  echo "usage: $0 default|avx2|avx512 COMMAND [ARG...]" >&2
  exit 2
fi
isa=$1
shift

# The CPU's feature flags (Linux x86-64); empty elsewhere, where only `default` runs.
# RUN_WITH_ISA_CPUINFO names another file in /proc/cpuinfo's format (to test the skip).
cpuinfo=${RUN_WITH_ISA_CPUINFO:-/proc/cpuinfo}
flags=""
if [ -r "$cpuinfo" ]; then
  flags=$(sed -n 's/^flags[[:space:]]*:[[:space:]]*//p' "$cpuinfo" | head -n 1)
fi
has() {
  for f in "$@"; do
    case " $flags " in
      *" $f "*) ;;
      *) return 1 ;;
    esac
  done
}
skip() {
  echo "skipped: this CPU lacks $1 (ATEN_CPU_CAPABILITY=$isa would fall back to a lower ISA)"
  exit 77
}

case $isa in
  default)
    # ATen's scalar kernels; MKL and oneDNN at SSE4 (caps: a CPU below that is unaffected).
    mkl=SSE4_2 onednn=SSE41 ;;
  avx2)
    # What ATen's AVX2 kernels require (cpuinfo: avx2 and fma3).
    has avx2 fma || skip "avx2/fma"
    mkl=AVX2 onednn=AVX2 ;;
  avx512)
    # What ATen's AVX512 kernels require: avx512f, avx512bw, avx512vl, avx512dq and fma3.
    has avx512f avx512bw avx512vl avx512dq fma || skip "avx512f/bw/vl/dq"
    mkl=AVX512 onednn=AVX512_CORE ;;
  *)
    echo "$0: unknown instruction set '$isa' (default, avx2 or avx512)" >&2
    exit 2 ;;
esac

export ATEN_CPU_CAPABILITY="$isa" MKL_ENABLE_INSTRUCTIONS="$mkl" ONEDNN_MAX_CPU_ISA="$onednn"
echo "run_with_isa: ATEN_CPU_CAPABILITY=$ATEN_CPU_CAPABILITY MKL_ENABLE_INSTRUCTIONS=$mkl ONEDNN_MAX_CPU_ISA=$onednn"
exec "$@"
