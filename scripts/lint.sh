#!/usr/bin/env bash
# The linters CI runs (inside the test environment): ruff (line length 120, pyproject.toml) and snakemake --lint.
export EXTRAS=test
source "$(dirname "$0")/env.sh"
cd "$REPO"
ruff check .
snakemake --lint
echo "[lint] ruff and snakemake --lint: clean"
