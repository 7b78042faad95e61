#!/usr/bin/env bash
# Create (or reuse) the project-local virtual environment `.venv` with the
# pinned OpenMMLab stack mmconv is tested against.
#
#   bash tools/env/setup.sh          # idempotent; fast when already done
#
# mmcv 2.1.0 has no wheel for torch 2.14, so it is built from source with
# its C++ ops once (~10 min on 2 cores) and the wheel is cached in
# ${MMCONV_CACHE:-$HOME/.cache/mmconv}/wheels for every later clone/run.
# The result passes `pip check`, and its console scripts (mmconv, mim) are
# modern ones (verified at the end, and on every later call).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MMCONV_VENV:-$ROOT/.venv}"
CACHE="${MMCONV_CACHE:-$HOME/.cache/mmconv}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3}"
STAMP_VERSION="stack-v4"   # bump when requirements/*.txt change
# venvs stamped with these are repaired in place (below), not rebuilt
REPAIRABLE_STAMPS=("stack-v3")

# The pins live in requirements/reference.txt (setup.py reads it too).
pin() { grep -E "^$1([=<>]|$)" "$ROOT/requirements/reference.txt" | head -n1; }
TORCH_PINS=("$(pin torch)" "$(pin torchvision)")
MMCV_VERSION="$(pin mmcv | sed 's/^mmcv==//')"
TORCH_VERSION="$(pin torch | sed 's/^torch==//')"
BUILD_PINS=("$(pin setuptools)" wheel ninja "$(pin numpy)" packaging)
STACK_PINS=("$(pin mmengine)" "$(pin mmdet)" "$(pin mmpretrain)" "$(pin numpy)"
            "$(pin setuptools)" "$(pin openmim)" "$(pin opendatalab)")
# test tools, timm (a test-only reference model zoo) among them
TEST_PINS=($(grep -Ev '^(#|$)' "$ROOT/requirements/tests.txt"))

step() { printf '\n[mmconv setup] %s\n' "$*"; }
fail() { printf '\n[mmconv setup] FAILED: %s\n' "$*" >&2; exit 1; }

PIP=("$VENV/bin/python" -m pip)

install_editable() {
  # PEP 660 (pyproject.toml, setuptools>=64): a modern `mmconv` script
  "${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT" \
    || fail "pip install -e $ROOT (is setup.py valid?)"
}

verify() {
  # one consistent environment, and console scripts that run as users run
  # them (an old-style script resolves every requirement via pkg_resources)
  "${PIP[@]}" check >&2 || fail "pip check: $VENV is inconsistent (see above; rm -rf $VENV and rerun)"
  local script
  for script in mmconv mim; do
    [[ -x "$VENV/bin/$script" ]] || fail "$VENV/bin/$script is missing"
    ! grep -q pkg_resources "$VENV/bin/$script" \
      || fail "$VENV/bin/$script is an old-style (pkg_resources) entry script"
  done
  "$VENV/bin/mmconv" --version > /dev/null || fail "$VENV/bin/mmconv --version"
}

stamp() { [[ -f "$VENV/.mmconv-stack" ]] && cat "$VENV/.mmconv-stack" || true; }

if [[ "$(stamp)" == "$STAMP_VERSION" ]]; then
  # Already set up: (re)install the project itself, in editable mode, and
  # any test pin added since (a no-op when they are all satisfied).
  "${PIP[@]}" install -q "${TEST_PINS[@]}" || fail "installing ${TEST_PINS[*]}"
  install_editable
  verify
  exit 0
fi

if [[ " ${REPAIRABLE_STAMPS[*]} " == *" $(stamp) "* ]]; then
  # stack-v3 venvs: openmim had pulled opendatalab 0.0.10 -> openxlab, which
  # pinned setuptools 60.2 (torch needs >=77.0.3) and downgraded requests,
  # rich, filelock, ...; timm lacked huggingface_hub; the editable install
  # wrote an old-style `mmconv` script. Bring it to what a fresh set-up
  # gives (same `pip freeze` names; measured) in about a minute instead of
  # rebuilding: drop openxlab and what only it needed, upgrade what it
  # held back, install the pins.
  step "repairing $VENV ($(stamp) -> $STAMP_VERSION): no openxlab; ${STACK_PINS[*]} ${TEST_PINS[*]}"
  "${PIP[@]}" uninstall -q -y openxlab oss2 aliyun-python-sdk-core \
    aliyun-python-sdk-kms crcmod jmespath cryptography cffi pycparser pytz \
    || fail "uninstalling openxlab"
  "${PIP[@]}" install -q -U filelock packaging requests rich tqdm urllib3 \
    "${STACK_PINS[@]}" "${TEST_PINS[@]}" \
    || fail "installing ${STACK_PINS[*]} ${TEST_PINS[*]}"
  install_editable
  verify
  echo "$STAMP_VERSION" > "$VENV/.mmconv-stack"
  step "ready: $VENV"
  exit 0
fi

step "python: $($PY --version 2>&1) -> virtual environment $VENV"
[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" \
  || fail "could not create $VENV (install python3-venv)"

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
# numpy<2 with them: opencv-python 5 requires numpy>=2
"${PIP[@]}" install -q addict pyyaml yapf opencv-python "$(pin mmengine)" "$(pin numpy)" \
  || fail "installing mmcv runtime requirements"

step "OpenMMLab stack, mim and test tools (${STACK_PINS[*]} ${TEST_PINS[*]})"
"${PIP[@]}" install -q "${STACK_PINS[@]}" "${TEST_PINS[@]}" "$MMCV_WHEEL" \
  || fail "installing ${STACK_PINS[*]} ${TEST_PINS[*]}"

step "mmconv (editable)"
install_editable
verify

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
