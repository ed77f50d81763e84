"""Every path the DAG and the CLI write, defined once.

The templates are Python format strings whose fields are also the Snakemake wildcards of the rules that write them
(``workflow/rules/*.smk`` use these constants), so a path is never spelt twice. A result whose numbers depend on
settings carries its identity (``{id}``, see ``benchmark.settings``) in its path: two different settings can never
share a file, and a changed setting makes a new one instead of overwriting the old.
"""
from __future__ import annotations

from pathlib import Path

DATA_RAW = "data/raw/{dataset}"
DATA_PROCESSED = "data/processed/{dataset}"
PROCESSED_FILES = ("clips.pt", "info.json")
SPLIT_FILE = DATA_PROCESSED + "/splits/{fold}.csv"

#: one training run (metrics.json, model.pt, train.log)
RUN_DIR = "results/runs/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}"
#: G-Blend's weights for the runs of one dataset/fold/backbone/fusion/seed (method: gblend or gblend-<subset>)
ESTIMATE_FILE = "results/gblend/{dataset}/{fold}/{backbone}/{fusion}/{method}/seed{seed}-{id}.json"
#: the tuning of one dataset/fold/backbone/fusion/method: trial<k>.json and best.json
TUNING_DIR = "results/tuning/{dataset}/{fold}/{backbone}/{fusion}/{method}/{id}"
#: an experiment's view of its runs: leaderboard tables, report and plots
EXPERIMENT_DIR = "results/{experiment}"
EXPERIMENT_OUTPUTS = ("leaderboard.csv", "leaderboard.md", "leaderboard.tex", "agreement.csv", "report.html")
#: the runs an experiment's view was built from (one file; its name changes with them)
EXPERIMENT_RECORD = EXPERIMENT_DIR + "/runs-{id}.json"
LOGS = "results/logs"

#: top-level folders of results/ that are not experiments (an experiment cannot take these names)
RESERVED = ("runs", "gblend", "tuning", "logs")


def fill(template: str, **fields) -> Path:
    return Path(template.format(**fields))


def raw_dir(dataset: str) -> Path:
    return fill(DATA_RAW, dataset=dataset)


def processed_dir(dataset: str) -> Path:
    return fill(DATA_PROCESSED, dataset=dataset)


def experiment_dir(experiment: str) -> Path:
    return fill(EXPERIMENT_DIR, experiment=experiment)
