#!/usr/bin/env bash
# The main job: build libddp and run the benchmark under mpirun on CPU, 2 ranks with one
# compute thread each. Arguments go to ddp_bench (see --help); NP=3 changes the ranks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/setup.sh"
# The environment setup.sh made: its python and torchrun first on PATH.
source "$root/scripts/venv.sh"
ddp_use_venv
"$root/scripts/build.sh" >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# Ranks share the cores: let an idle MPI rank yield instead of spinning (docs/performance.md).
export OMPI_MCA_mpi_yield_when_idle=${OMPI_MCA_mpi_yield_when_idle:-1}
exec mpirun --oversubscribe --bind-to none -np "${NP:-2}" "${BUILD_DIR:-$root/build}/bench/ddp_bench" "$@"
