#!/usr/bin/env bash
# Command 1: environment + the whole benchmark DAG -> results/leaderboard.{md,csv} and plots.
# Extra arguments go to snakemake (e.g. `bash run.sh -n` for a dry run, `--configfile my.yaml`).
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"
exec snakemake --workflow-profile workflow/profiles/default "$@"
