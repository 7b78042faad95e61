#!/usr/bin/env bash
# The light onedl environment `.venv-onedl`: torch 2.4 with the maintained
# OpenMMLab fork's MMEngine (onedl-mmengine: the `mmengine` module under
# another distribution name), numpy<2 and the test tools; no mmcv/mmdet
# (nothing to build). torch 2.4 is the fork's declared minimum
# (onedl-mmdetection 3.5: torch>=2.4); onedl-mmengine 0.10.9+ cannot import
# mmengine.model on torch < 2.3 (torch.amp.GradScaler), so torch 2.1 would
# test nothing of SelfSupPretrained. Still < 2.6: mmconv reads torch files
# with its own restricted reader here. mmconv is installed with plain `pip install .` to
# prove it changes nothing there, installs no `mmengine` distribution over
# the fork's module and leaves numpy/torch working (install_unchanged.sh).
#
#   bash tools/env/setup_onedl.sh     # idempotent
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MMCONV_VENV_ONEDL:-$ROOT/.venv-onedl}"
PY="${PYTHON:-python3}"
STAMP_VERSION="onedl-v3"
# opencv-python: onedl-mmcv requires it and onedl-mmengine's hooks import cv2
# without declaring it (4.x here: opencv-python 5 requires numpy>=2)
PINS=(torch==2.4.1 torchvision==0.19.1 "numpy<2" onedl-mmengine==0.10.12
      opencv-python)
TESTS=($(grep -Ev '^(#|timm|$)' "$ROOT/requirements/tests.txt"))

step() { printf '\n[mmconv setup onedl] %s\n' "$*"; }
fail() { printf '\n[mmconv setup onedl] FAILED: %s\n' "$*" >&2; exit 1; }

if [[ ! -f "$VENV/.mmconv-stack" || "$(cat "$VENV/.mmconv-stack")" != "$STAMP_VERSION" ]]; then
  step "virtual environment $VENV (${PINS[*]} ${TESTS[*]})"
  # one of ours with other pins (it has a stamp): start from scratch
  [[ -f "$VENV/.mmconv-stack" ]] && rm -rf "$VENV"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" \
    || fail "could not create $VENV (install python3-venv)"
  "$VENV/bin/python" -m pip install -q "${PINS[@]}" "${TESTS[@]}" \
    || fail "installing ${PINS[*]} ${TESTS[*]}"
  echo "$STAMP_VERSION" > "$VENV/.mmconv-stack"
fi
bash "$ROOT/tools/env/install_unchanged.sh" "$VENV" "setup onedl"
"$VENV/bin/python" -I - <<'PY' || fail "mmconv does not work with onedl-mmengine in $VENV"
import importlib.metadata as md

import numpy
import torch

import mmconv
import mmengine
from mmengine.registry import WEIGHT_INITIALIZERS

from mmconv.stack import mmengine_version

names = {d.metadata['Name'].lower() for d in md.distributions()}
assert 'mmengine' not in names, 'an mmengine distribution was installed'
assert mmengine.__version__ == md.version('onedl-mmengine'), mmengine.__version__
assert mmengine_version() == mmengine.__version__, mmengine_version()
assert torch.from_numpy(numpy.zeros(2)).sum().item() == 0  # numpy works
assert WEIGHT_INITIALIZERS.get('SelfSupPretrained') is not None
print('[mmconv setup onedl] torch', torch.__version__, 'numpy',
      numpy.__version__, 'onedl-mmengine', mmengine.__version__, 'mmconv',
      mmconv.__version__)
PY
