#!/usr/bin/env bash
# Command 1: environment + the whole benchmark DAG -> results/<experiment>/leaderboard.{md,csv,tex}, report.html, plots.
# Extra arguments go to snakemake (e.g. `bash run.sh -n` for a dry run's per-rule summary, `-n --full` for Snakemake's whole
# plan, `--configfile my.yaml` for an overlay), except
# `--set key.path=value` (repeatable): a typed override that reaches every step as it reaches the DAG.
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"
exec python -m benchmark run "$@"
