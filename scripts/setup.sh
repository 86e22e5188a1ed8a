#!/usr/bin/env bash
# Set up rlfm in ./.venv: PyTorch first (the CPU build where there is no NVIDIA GPU, the CUDA
# build where there is one), then rlfm and its dependencies from the package registry.
#   bash scripts/setup.sh          # to run rlfm
#   bash scripts/setup.sh dev      # + test tools        (bash scripts/setup.sh dev,bench: + peers)
# Environment: PYTHON (default python3), RLFM_TORCH (default torch==2.13.0),
#   RLFM_TORCH_CPU_INDEX (an index serving CPU builds of torch, tried when no GPU is present and
#   the CPU build is not found otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
python="${PYTHON:-python3}"
torch_spec="${RLFM_TORCH:-torch==2.13.0}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# --no-compile, then compileall on every core below: pip byte-compiles on one core (174 s for
# the whole setup against 149 s on a 2-core machine)
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-compile)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of $torch_spec"
    "${pip[@]}" "$torch_spec"
  else
    echo "setup: no NVIDIA GPU: installing the CPU build of $torch_spec"
    # a '+cpu' local version picks the CPU wheel wherever one is offered (a local wheel
    # directory, a mirror, or RLFM_TORCH_CPU_INDEX); otherwise fall back to the default build
    "${pip[@]}" "${torch_spec}+cpu" 2>/dev/null \
      || { [ -n "${RLFM_TORCH_CPU_INDEX:-}" ] \
           && "${pip[@]}" "${torch_spec}+cpu" --extra-index-url "$RLFM_TORCH_CPU_INDEX"; } \
      || "${pip[@]}" "$torch_spec"
  fi
fi

if [ -n "$extras" ]; then
  "${pip[@]}" -e ".[$extras]"
else
  "${pip[@]}" -e .
fi
# byte-compile what was installed, as pip would have (files that are not Python 3 are skipped)
.venv/bin/python -m compileall -q -j 0 src \
  "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
  >/dev/null 2>&1 || true
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
