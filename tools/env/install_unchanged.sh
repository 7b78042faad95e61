#!/usr/bin/env bash
# `pip install <mmconv>` into an existing environment, as a user installs it,
# and prove it changed nothing else: `pip freeze --all` identical apart from
# mmconv, and `pip check` clean.
#
#   bash tools/env/install_unchanged.sh VENV [LABEL]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$1"
LABEL="${2:-install}"
PIP=("$VENV/bin/python" -m pip)

fail() { printf '\n[mmconv %s] FAILED: %s\n' "$LABEL" "$*" >&2; exit 1; }
freeze() {  # everything but mmconv (and pip's comment on an editable one)
  "${PIP[@]}" freeze --all | grep -Eiv '^(mmconv( |=|@|$)|# .*\(mmconv==)' \
    | grep -Fxv -- "-e $ROOT" | sort
}

# setuptools builds in $ROOT/build and ships stale files left there (a
# module deleted since the last build): start from a clean build directory
rm -rf "$ROOT/build"
before="$(freeze)"
printf '\n[mmconv %s] pip install %s (must change nothing else)\n' "$LABEL" "$ROOT"
"${PIP[@]}" install -q "$ROOT" || fail "pip install $ROOT"
after="$(freeze)"
if [[ "$before" != "$after" ]]; then
  diff <(echo "$before") <(echo "$after") >&2 || true
  fail "pip install $ROOT changed the environment (diff above: < before, > after)"
fi
"${PIP[@]}" check >&2 || fail "pip check after installing mmconv (see above)"
"${PIP[@]}" freeze --all | grep -Ei '^mmconv' \
  || fail "mmconv is not installed in $VENV"
echo "[mmconv $LABEL] pip freeze unchanged apart from mmconv ($(echo "$after" | wc -l) other distributions); pip check clean"
