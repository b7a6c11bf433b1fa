#!/usr/bin/env bash
# Installs what libddp needs on a fresh Debian 12 machine and leaves an existing
# install alone (idempotent): OpenMPI, gloo's headers (for PyTorch's ProcessGroupGloo), Catch2,
# fmt, ccache, gnuplot from Debian;
# LibTorch from the PyPI `torch` wheel. Run as root (or with sudo available).
set -euo pipefail

need_apt=()
for pkg in openmpi-bin libopenmpi-dev libgloo-dev catch2 libfmt-dev ccache cmake g++ gnuplot-nox; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing the PyPI torch wheel (LibTorch for C++)"
  "$PYTHON" -m pip install -q torch
fi
if ! "$PYTHON" -c 'import numpy' >/dev/null 2>&1; then
  # Only to silence torch's import warning in bench/compare_torch.py.
  "$PYTHON" -m pip install -q numpy || true
fi
echo "setup: torch $("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null), $(mpirun --version 2>/dev/null | head -n 1)"
