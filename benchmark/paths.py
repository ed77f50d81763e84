"""Every path the DAG and the CLI write, defined once.

The templates are Python format strings whose fields are also the Snakemake wildcards of the rules that write them
(``workflow/rules/*.smk`` use these constants), so a path is never spelt twice. A result whose numbers depend on
settings carries its identity (``{id}``, see ``benchmark.settings``) in its path: two different settings can never
share a file, and a changed setting makes a new one instead of overwriting the old.
"""

from __future__ import annotations

from pathlib import Path

#: a dataset's raw clips and manifest (identity: its source or generation settings)
DATA_RAW = "data/raw/{dataset}/{raw_id}"
#: the Algorithm 1 subset of a multi-label manifest, in the raw folder (identity: the raw one and its settings)
BALANCED_MANIFEST = "manifest.balanced-{balance_id}.csv"
BALANCE_REPORT = "balance-{balance_id}.json"
#: the cached tensors (identity: every dataset setting but the split, and the numerics version)
DATA_PROCESSED = "data/processed/{dataset}/{cache_id}"
PROCESSED_FILES = ("index.csv", "info.json")  # written by the gather step once every shard is made
#: one fold's train/val/test assignment (identity: the cache and the split settings)
SPLIT_FILE = DATA_PROCESSED + "/splits/{split_id}/{fold}.csv"

#: one training run (metrics.json, model.pt, train.log)
RUN_DIR = "results/runs/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}"
#: G-Blend's weights for the runs of one dataset/fold/backbone/fusion/seed (method: gblend or gblend-<subset>)
ESTIMATE_FILE = "results/gblend/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}.json"
#: the tuning of one dataset/fold/backbone/fusion/method: trial<k>.json and best.json
TUNING_DIR = "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/{id}"
#: an experiment's view of its runs: leaderboard tables, report and plots
EXPERIMENT_DIR = "results/{experiment}"
EXPERIMENT_OUTPUTS = (
    "leaderboard.csv",
    "leaderboard.md",
    "leaderboard.tex",
    "agreement.csv",
    "history.csv",
    "report.html",
)
#: the runs an experiment's view was built from (one file; its name changes with them)
EXPERIMENT_RECORD = EXPERIMENT_DIR + "/runs-{id}.json"
LOGS = "results/logs"

#: the files and logs of each rule (workflow/rules/*.smk)
RAW_MANIFEST = DATA_RAW + "/manifest.csv"
BALANCED_MANIFEST_FILE = DATA_RAW + "/" + BALANCED_MANIFEST
BALANCE_REPORT_FILE = DATA_RAW + "/" + BALANCE_REPORT
INDEX_FILE = DATA_PROCESSED + "/index.csv"
INFO_FILE = DATA_PROCESSED + "/info.json"
#: one shard of the cache (benchmark.data.shards): its tensors and its record
SHARD_TENSORS = DATA_PROCESSED + "/shards/{shard}.pt"
SHARD_RECORD = DATA_PROCESSED + "/shards/{shard}.json"
RUN_METRICS = RUN_DIR + "/metrics.json"
RUN_LOG = RUN_DIR + "/train.log"
TRIAL_FILE = TUNING_DIR + "/trial{trial}.json"
TRIAL_LOG = TUNING_DIR + "/trial{trial}.log"
BEST_FILE = TUNING_DIR + "/best.json"
SELECT_LOG = TUNING_DIR + "/select.log"
DOWNLOAD_LOG = LOGS + "/download/{dataset}-{raw_id}.log"
BALANCE_LOG = LOGS + "/balance/{dataset}-{raw_id}-{balance_id}.log"
PREPROCESS_LOG = LOGS + "/preprocess/{dataset}-{cache_id}.log"
PREPROCESS_SHARD_LOG = LOGS + "/preprocess/{dataset}-{cache_id}/{shard}.log"
SPLIT_LOG = LOGS + "/split/{dataset}-{cache_id}-{split_id}/{fold}.log"
ESTIMATE_LOG = LOGS + "/estimate/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}.log"
AGGREGATE_LOG = LOGS + "/aggregate/{experiment}.log"

#: top-level folders of results/ that are not experiments (an experiment cannot take these names)
RESERVED = ("runs", "gblend", "tuning", "logs")


def fill(template: str, **fields) -> Path:
    return Path(template.format(**fields))


def experiment_dir(experiment: str) -> Path:
    return fill(EXPERIMENT_DIR, experiment=experiment)
