#!/usr/bin/env bash
# Set up the environment if needed, then run the demo: a MoCo v2-layout
# checkpoint made from a real torchvision ResNet-50 (random weights) is
# converted with selfsup2mmdet.py and loaded into MMDetection's Mask R-CNN
# R50-FPN backbone, which is checked tensor by tensor.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/env/setup.sh"
cd "$ROOT"
exec "${MMCONV_VENV:-$ROOT/.venv}/bin/python" tools/demo.py "$@"
