#!/usr/bin/env bash
# Create (or reuse) the project-local virtual environment `.venv` with the
# pinned OpenMMLab stack mmconv is tested against.
#
#   bash tools/env/setup.sh          # idempotent; fast when already done
#
# mmcv 2.1.0 has no wheel for torch 2.14, so it is built from source with
# its C++ ops once (~10 min on 2 cores) and the wheel is cached in
# ${MMCONV_CACHE:-$HOME/.cache/mmconv}/wheels for every later clone/run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MMCONV_VENV:-$ROOT/.venv}"
CACHE="${MMCONV_CACHE:-$HOME/.cache/mmconv}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3}"
STAMP_VERSION="stack-v3"   # bump when requirements/*.txt change

# The pins live in requirements/reference.txt (setup.py reads it too).
pin() { grep -E "^$1([=<>]|$)" "$ROOT/requirements/reference.txt" | head -n1; }
TORCH_PINS=("$(pin torch)" "$(pin torchvision)")
MMCV_VERSION="$(pin mmcv | sed 's/^mmcv==//')"
TORCH_VERSION="$(pin torch | sed 's/^torch==//')"
BUILD_PINS=("setuptools>=77,<81" wheel ninja "$(pin numpy)" packaging)
STACK_PINS=("$(pin mmengine)" "$(pin mmdet)" "$(pin mmpretrain)" "$(pin numpy)")
# test tools; timm (a test-only reference model zoo) without its deps
TEST_PINS=($(grep -Ev '^(#|timm|$)' "$ROOT/requirements/tests.txt"))
TIMM_PIN="$(grep -E '^timm' "$ROOT/requirements/tests.txt")"

step() { printf '\n[mmconv setup] %s\n' "$*"; }
fail() { printf '\n[mmconv setup] FAILED: %s\n' "$*" >&2; exit 1; }

if [[ -f "$VENV/.mmconv-stack" && "$(cat "$VENV/.mmconv-stack")" == "$STAMP_VERSION" ]]; then
  # Already set up: only (re)install the project itself, in editable mode.
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e "$ROOT" \
    || fail "pip install -e $ROOT (is setup.py valid?)"
  exit 0
fi

step "python: $($PY --version 2>&1) -> virtual environment $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" \
  || fail "could not create $VENV (install python3-venv)"
PIP=("$VENV/bin/python" -m pip)

step "torch/torchvision (${TORCH_PINS[*]})"
"${PIP[@]}" install -q "${TORCH_PINS[@]}" \
  || fail "installing ${TORCH_PINS[*]} (they must be reachable from pip)"

step "build requirements (${BUILD_PINS[*]})"
"${PIP[@]}" install -q "${BUILD_PINS[@]}" || fail "installing build requirements"

mkdir -p "$WHEELS"
TAG="$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
TORCH_TAG="torch$TORCH_VERSION"
MMCV_DIR="$WHEELS/mmcv-$MMCV_VERSION-$TORCH_TAG-$TAG-$(uname -m)"
MMCV_WHEEL="$(ls "$MMCV_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$MMCV_WHEEL" ]]; then
  step "building mmcv==$MMCV_VERSION with ops from source (one time, ~10 min; cached in $MMCV_DIR)"
  tmp="$(mktemp -d "$WHEELS/.build.XXXXXX")"
  MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
  CC="$ROOT/tools/env/cxx20" CXX="$ROOT/tools/env/cxx20" \
    "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv \
      -w "$tmp" "mmcv==$MMCV_VERSION" > "$tmp/build.log" 2>&1 \
    || { tail -n 40 "$tmp/build.log" >&2; fail "building mmcv $MMCV_VERSION (full log: $tmp/build.log)"; }
  mkdir -p "$MMCV_DIR"
  mv "$tmp"/mmcv-"$MMCV_VERSION"-*.whl "$MMCV_DIR"/ && rm -rf "$tmp"
  MMCV_WHEEL="$(ls "$MMCV_DIR"/mmcv-"$MMCV_VERSION"-*.whl | head -n1)"
else
  step "reusing cached mmcv wheel $MMCV_WHEEL"
fi
"${PIP[@]}" install -q --no-deps "$MMCV_WHEEL" || fail "installing $MMCV_WHEEL"
"${PIP[@]}" install -q addict pyyaml yapf opencv-python "$(pin mmengine)" \
  || fail "installing mmcv runtime requirements"

step "OpenMMLab stack (${STACK_PINS[*]}) and test tools (${TEST_PINS[*]} $TIMM_PIN)"
"${PIP[@]}" install -q "${STACK_PINS[@]}" "${TEST_PINS[@]}" "$MMCV_WHEEL" \
  || fail "installing ${STACK_PINS[*]} ${TEST_PINS[*]}"
"${PIP[@]}" install -q --no-deps "$TIMM_PIN" || fail "installing $TIMM_PIN"
# openmim pins setuptools down; install it last so the mmcv build is unaffected.
"${PIP[@]}" install -q openmim==0.3.9 "$(pin numpy)" || fail "installing openmim==0.3.9"

step "mmconv (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" || fail "pip install -e $ROOT"

"$VENV/bin/python" - <<'PY' || fail "the installed stack does not import"
import torch, torchvision, mmengine, mmcv, mmdet, mmpretrain, timm
from mmcv.ops import RoIAlign, nms  # proves mmcv was built with ops
import numpy
assert int(numpy.__version__.split('.')[0]) < 2, f'numpy {numpy.__version__}: need numpy<2'
print('[mmconv setup] torch', torch.__version__, 'torchvision', torchvision.__version__,
      'mmengine', mmengine.__version__, 'mmcv', mmcv.__version__,
      'mmdet', mmdet.__version__, 'mmpretrain', mmpretrain.__version__)
PY
echo "$STAMP_VERSION" > "$VENV/.mmconv-stack"
step "ready: $VENV"
