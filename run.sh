#!/usr/bin/env bash
# Command 1: environment + the whole benchmark DAG -> results/<experiment>/leaderboard.{md,csv,tex}, report.html, plots.
# Extra arguments go to snakemake (e.g. `bash run.sh -n` for a dry run, `--configfile my.yaml` for an overlay), except
# `--set key.path=value` (repeatable): a typed override, passed on to every step exactly as `python -m benchmark` reads it.
source "$(dirname "$0")/scripts/env.sh"
cd "$REPO"
args=()
sets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --set) [ $# -ge 2 ] || { echo "error: --set needs key.path=value" >&2; exit 2; }; sets+=("$2"); shift 2 ;;
        --set=*) sets+=("${1#--set=}"); shift ;;
        *) args+=("$1"); shift ;;
    esac
done
if [ ${#sets[@]} -gt 0 ]; then
    args+=(--config "set=$(python -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "${sets[@]}")")
fi
exec snakemake --workflow-profile workflow/profiles/default "${args[@]}"
