#!/usr/bin/env bash
# Set up the environments if needed, then run the whole test suite:
#   1. everything, on the reference stack (.venv);
#   2. the light older-torch leg: the conversion core, the command line,
#      SelfSupPretrained and the hostile corpus on torch 2.1 + mmengine
#      (.venv-torch21), where mmconv reads torch files with its own
#      restricted reader;
#   3. the light onedl leg: the same tests on torch 2.4 (the fork's
#      minimum; still the restricted reader) + onedl-mmengine, the
#      maintained fork's MMEngine (.venv-onedl); both light set-ups
#      install mmconv with plain `pip install .` and fail if that changes
#      any installed distribution.
#   bash tools/test.sh [extra pytest arguments for leg 1]
#   MMCONV_SKIP_TORCH21=1 / MMCONV_SKIP_ONEDL=1 bash tools/test.sh  # skip a leg
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/env/setup.sh"
cd "$ROOT"
"${MMCONV_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -ra "$@"
# what needs neither mmcv, mmdet nor timm (their tests skip cleanly); every
# case of a sweep (tests/helpers/tiers.py), not only the representatives
LIGHT_TESTS=(tests/test_io.py tests/test_torchzip.py tests/test_convert.py
             tests/test_detect.py tests/test_pipeline.py tests/test_layout.py
             tests/test_init.py tests/test_stack.py tests/test_hostile.py
             tests/test_allowlist.py tests/test_lazy.py)
if [[ -z "${MMCONV_SKIP_TORCH21:-}" ]]; then
  bash "$ROOT/tools/env/setup_torch21.sh"
  "${MMCONV_VENV_TORCH21:-$ROOT/.venv-torch21}/bin/python" -m pytest -ra \
    -m "not slow or sweep" "${LIGHT_TESTS[@]}"
fi
if [[ -z "${MMCONV_SKIP_ONEDL:-}" ]]; then
  bash "$ROOT/tools/env/setup_onedl.sh"
  "${MMCONV_VENV_ONEDL:-$ROOT/.venv-onedl}/bin/python" -m pytest -ra \
    -m "not slow or sweep" "${LIGHT_TESTS[@]}"
fi
