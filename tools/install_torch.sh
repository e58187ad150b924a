#!/usr/bin/env bash
# Install PyTorch into the given Python's environment, CPU or CUDA build, without ever pulling a CUDA build by accident.
#   tools/install_torch.sh PYTHON [cpu|cuda|auto] [VERSION]
# auto: cuda when `nvidia-smi` finds a GPU, else cpu. Idempotent: does nothing when the right build is installed.
set -euo pipefail
py=${1:?python}; kind=${2:-auto}; version=${3:-2.13.0}
cpu_index=https://download.pytorch.org/whl/cpu

if [ "$kind" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then kind=cuda; else kind=cpu; fi
fi
case "$kind" in cpu|cuda) ;; *) echo "TORCH must be cpu, cuda or auto, got '$kind'" >&2; exit 2;; esac

read -r have_version have_kind < <("$py" -c 'import torch; print(torch.__version__, "cuda" if torch.version.cuda else "cpu")' 2>/dev/null || echo "none none")
if [ "${have_version%%+*}" = "$version" ] && [ "$have_kind" = "$kind" ]; then
  echo "torch $have_version ($kind build) already installed"; exit 0
fi

pip() { "$py" -m pip install --disable-pip-version-check -q "$@"; }
echo "installing torch $version ($kind build)"
if [ "$kind" = cuda ] || [ "$(uname -s)" = Darwin ]; then
  pip "torch==$version"                      # PyPI's Linux wheel is the CUDA build; macOS wheels are CPU/MPS
else
  # The +cpu wheel: found directly where a local wheel or the PyTorch CPU index is configured; else ask that index.
  pip "torch==$version+cpu" 2>/dev/null || pip "torch==$version" --index-url "$cpu_index"
fi
"$py" -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU", "build")' 2>/dev/null
