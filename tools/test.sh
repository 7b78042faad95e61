#!/usr/bin/env bash
# Set up the environment if needed, then run the whole test suite.
#   bash tools/test.sh [extra pytest arguments]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/tools/env/setup.sh"
cd "$ROOT"
exec "${MMCONV_VENV:-$ROOT/.venv}/bin/python" -m pytest tests -ra "$@"
