#!/usr/bin/env bash
# Command 2: environment (if missing) + the test suite. Extra arguments go to pytest.
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"
exec python -m pytest "$@"
