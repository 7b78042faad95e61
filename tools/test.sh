#!/usr/bin/env bash
# Set up the environments if needed, then run the whole test suite:
#   1. everything, on the reference stack (.venv);
#   2. the light older-torch leg: the conversion core, the command line and
#      the hostile corpus on torch 2.1 + mmengine (.venv-torch21), where
#      mmconv reads torch files with its own restricted reader.
#   bash tools/test.sh [extra pytest arguments for leg 1]
#   MMCONV_SKIP_TORCH21=1 bash tools/test.sh      # leg 1 only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/env/setup.sh"
cd "$ROOT"
"${MMCONV_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -ra "$@"
if [[ -z "${MMCONV_SKIP_TORCH21:-}" ]]; then
  bash "$ROOT/tools/env/setup_torch21.sh"
  "${MMCONV_VENV_TORCH21:-$ROOT/.venv-torch21}/bin/python" -m pytest -ra \
    -m "not slow" tests/test_io.py tests/test_torchzip.py \
    tests/test_convert.py tests/test_detect.py tests/test_pipeline.py \
    tests/test_layout.py
fi
