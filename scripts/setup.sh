#!/usr/bin/env bash
# Installs what libddp needs on a fresh Debian 12 machine and leaves an existing
# install alone (idempotent): OpenMPI, gloo's headers (for PyTorch's ProcessGroupGloo), Catch2, fmt, ccache, gnuplot from Debian;
# LibTorch from the PyPI `torch` wheel, installed with numpy into a virtual environment
# this script creates ($DDP_VENV, default .venv in the repository root; scripts/venv.sh),
# never into the system Python (Debian 12 refuses that: PEP 668). Run as root (or with
# sudo available). PYTHON names the interpreter the environment is made from (python3).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/venv.sh"

need_apt=()
for pkg in openmpi-bin libopenmpi-dev libgloo-dev catch2 libfmt-dev ccache cmake g++ gnuplot-nox; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
# The system Python and its venv module (Debian splits ensurepip out into python3-venv),
# which creates the environment below.
for pkg in python3 python3-venv; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# The environment sees the base interpreter's packages (--system-site-packages): where
# that Python already has torch (a CI machine, a pyenv with torch installed) the
# multi-GB wheel is not downloaded again; on a stock Debian 12, whose system Python has
# no torch, it is installed into the environment. Whatever pip installs here goes into
# the environment and shadows the base interpreter's copy.
PYTHON=${PYTHON:-python3}
if [ ! -x "$DDP_VENV/bin/python" ] || [ ! -x "$DDP_VENV/bin/pip" ]; then
  echo "setup: creating the virtual environment $DDP_VENV from $(command -v "$PYTHON") ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv --system-site-packages "$DDP_VENV"
fi
py=$DDP_VENV/bin/python
torch_version=$("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) || torch_version=""
if [ -z "$torch_version" ]; then
  # DDP_TORCH: another requirement, e.g. "torch==2.5.1".
  echo "setup: installing the PyPI torch wheel (LibTorch for C++) into $DDP_VENV"
  "$py" -m pip install --progress-bar off "${DDP_TORCH:-torch}"
fi
if ! "$py" -c 'import numpy' >/dev/null 2>&1; then
  # Only to silence torch's import warning in bench/compare_torch.py.
  "$py" -m pip install -q numpy || true
fi
[ -n "$torch_version" ] || torch_version=$("$py" -c 'import torch; print(torch.__version__)')
# torchrun comes with the wheel, but only in the environment that installed it: where torch
# comes from the base interpreter, the environment gets the same launcher here.
# (The same script pip writes for the wheel's entry point.)
if [ ! -x "$DDP_VENV/bin/torchrun" ]; then
  printf '#!%s\n# torchrun for the torch this environment sees (written by scripts/setup.sh)\nimport sys\nfrom torch.distributed.run import main\nsys.argv[0] = "torchrun"\nsys.exit(main())\n' \
    "$py" >"$DDP_VENV/bin/torchrun"
  chmod +x "$DDP_VENV/bin/torchrun"
fi
echo "setup: $py: torch $torch_version, $(mpirun --version 2>/dev/null | head -n 1)"
