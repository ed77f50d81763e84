#!/usr/bin/env bash
# Command 2: environment with the test extras (if missing) + the test suite, spread over all CPU cores. Extra
# arguments go to pytest (e.g. `bash test.sh -m "not slow"`, or `-n 0` for one process).
export EXTRAS=test
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"
exec python -m pytest -n auto "$@"
