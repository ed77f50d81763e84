# Sourced by run.sh and test.sh: make sure .venv exists and holds exactly the pinned dependencies (test.sh sets
# EXTRAS=test for the test-only packages). Re-installs only when pyproject.toml or the extras changed, so a second
# run costs a hash, not an install.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$REPO/.venv"
PYTHON="${PYTHON:-python3}"
EXTRAS="${EXTRAS:-}"
STAMP="$VENV/.installed-from"
want="$(sha256sum "$REPO/pyproject.toml" "$REPO/setup.py" | sha256sum | cut -d' ' -f1) extras=${EXTRAS}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
        || { echo "error: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
    echo "[env] creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
have="$(cat "$STAMP" 2>/dev/null || true)"
# a test environment also serves run.sh: its stamp names the same pins with more extras
if [ "$have" != "$want" ] && ! { [ -z "$EXTRAS" ] && [ "${have% extras=*}" = "${want% extras=*}" ]; }; then
    echo "[env] installing pinned dependencies${EXTRAS:+ with [$EXTRAS]} (first time: a few minutes)"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e "$REPO${EXTRAS:+[$EXTRAS]}"
    echo "$want" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONUNBUFFERED=1
