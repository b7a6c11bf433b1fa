# Sourced by scripts/setup.sh, build.sh, test.sh and bench.sh (not run): where the
# Python side lives. scripts/setup.sh creates a virtual environment at $DDP_VENV
# (default: .venv in the repository root) and installs the torch wheel (LibTorch) and
# numpy into it, so that nothing is pip-installed into the system Python (which Debian 12
# refuses, PEP 668).
#
# After sourcing, with $root set to the repository root:
#   DDP_VENV          the virtual environment's folder (exported)
#   DDP_PYTHON        its python, when the environment exists; else empty
#   DDP_CMAKE_PYTHON  -DPython3_EXECUTABLE=$DDP_PYTHON for CMake (LibTorch is found through
#                     that python: cmake/DdpFindTorch.cmake), or nothing without a venv
# ddp_use_venv puts $DDP_VENV/bin first on PATH, so that `python3`, `python` and
# `torchrun` in the scripts and in ctest's commands are the environment's.
# Without a venv (torch installed by other means, build.sh run alone) the scripts keep
# using whatever python3 is on PATH, as before.
export DDP_VENV=${DDP_VENV:-$root/.venv}
DDP_PYTHON=""
DDP_CMAKE_PYTHON=()
if [ -x "$DDP_VENV/bin/python" ]; then
  DDP_PYTHON=$DDP_VENV/bin/python
  DDP_CMAKE_PYTHON=(-DPython3_EXECUTABLE="$DDP_PYTHON")
fi

ddp_use_venv() {
  if [ -n "$DDP_PYTHON" ]; then
    case "$PATH" in
      "$DDP_VENV/bin:"*) ;;
      *) export PATH="$DDP_VENV/bin:$PATH" ;;
    esac
    export VIRTUAL_ENV=$DDP_VENV
  fi
}
