#!/usr/bin/env bash
# One command for a GPU machine; the logic and every option are in benchmarks/gpu_run.py (--help).
#   benchmarks/gpu_run.sh --make-data ../shared/field_data gpu_data   # once, where the full data is
#   benchmarks/gpu_run.sh --data-root gpu_data --out OUT               # on the GPU machine: <= 8 minutes on one H100
# Python: $PYTHON, else the checkout's .venv, else python3; weedseg is imported from this checkout.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
    if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python=python3; fi
fi
if ! "$python" -c "import torch, cv2, onnx, onnxruntime, matplotlib, tqdm" 2>/dev/null; then
    echo "gpu_run.sh: $python lacks weedseg's packages (torch, opencv, onnx, onnxruntime, matplotlib, tqdm):" \
         "run make setup, or set PYTHON to a Python that has them" >&2
    exit 2
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" "$repo/benchmarks/gpu_run.py" "$@"
