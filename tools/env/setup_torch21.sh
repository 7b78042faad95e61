#!/usr/bin/env bash
# The older-torch environment `.venv-torch21`: torch 2.1 (what MMDetection
# 3.3 users with prebuilt mmcv ops run), torchvision, mmengine and the test
# tools; no mmcv/mmdet (nothing to build). mmconv is installed with plain
# `pip install .` to prove it changes nothing there (install_unchanged.sh).
#
#   bash tools/env/setup_torch21.sh     # idempotent
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${MMCONV_VENV_TORCH21:-$ROOT/.venv-torch21}"
PY="${PYTHON:-python3}"
STAMP_VERSION="torch21-v2"
PINS=(torch==2.1.2 torchvision==0.16.2 "numpy<2" mmengine==0.10.7)
TESTS=($(grep -Ev '^(#|timm|$)' "$ROOT/requirements/tests.txt"))

step() { printf '\n[mmconv setup torch21] %s\n' "$*"; }
fail() { printf '\n[mmconv setup torch21] FAILED: %s\n' "$*" >&2; exit 1; }

if [[ ! -f "$VENV/.mmconv-stack" || "$(cat "$VENV/.mmconv-stack")" != "$STAMP_VERSION" ]]; then
  step "virtual environment $VENV (${PINS[*]} ${TESTS[*]})"
  [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV" \
    || fail "could not create $VENV (install python3-venv)"
  "$VENV/bin/python" -m pip install -q "${PINS[@]}" "${TESTS[@]}" \
    || fail "installing ${PINS[*]} ${TESTS[*]}"
  echo "$STAMP_VERSION" > "$VENV/.mmconv-stack"
fi
bash "$ROOT/tools/env/install_unchanged.sh" "$VENV" "setup torch21"
