"""What the steps say: one readable line per epoch, progress bars only on a terminal (never in a job's log file),
the closing and dry-run summaries of the DAG, one-line errors for what a user can get wrong, and a CLI that starts
without torch."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark import cli, logs
from benchmark.config import validate_config
from benchmark.grid import grid_runs
from benchmark.settings import Resolver
from benchmark.train import epoch_line
from tests.conftest import REPO, tiny_config

#: the environment of a step run by hand, without the variables that force bars or levels
ENV = {k: v for k, v in os.environ.items() if not k.startswith("BENCHMARK_")} | {"PYTHONPATH": str(REPO)}
TRAIN = ["train", "--dataset", "synthetic-av", "--backbone", "small_cnn", "--fusion", "concat", "--seed", "0"]


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch):
    """``cli.main`` configures the ``benchmark`` logger: put it back as it was for the other tests."""
    for name in (logs.PROGRESS_ENV, logs.LEVEL_ENV, logs.DEBUG_ENV):
        monkeypatch.delenv(name, raising=False)
    logger = logging.getLogger(logs.ROOT_LOGGER)
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:], logger.level = handlers, level


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# --- the epoch line ------------------------------------------------------------------------------------------------
def test_the_epoch_line_is_one_readable_line_with_1_based_epochs():
    row = {
        "epoch": 2,
        "lr": 0.3,
        "train_loss": 0.41234,
        "train_acc": 0.8123,
        "val_loss": 0.5,
        "val_accuracy": 0.847,
        "val_acc_audio": 0.7,
        "train_eval_loss": 0.4,
        "ogr": 0.12,
        "k_audio": 0.3141,
        "k_visual": 1.0,
    }
    assert epoch_line(row, 16, 2.08, "val_accuracy", (0.851, 1)) == (
        "epoch 3/16  train loss 0.412 acc 81.2%  val acc 84.7% (best 85.1% @ 2)  lr 0.3  2.1 s"
        "  | k_audio 0.314 k_visual 1"
    )
    multi_label = {"epoch": 0, "lr": 0.01, "train_loss": 0.2, "train_acc": 0.5, "val_mAP": 0.54}
    assert epoch_line(multi_label, 4, 1.0, "val_mAP", (0.54, 0)) == (
        "epoch 1/4  train loss 0.200 acc 50.0%  val mAP 54.0% (best 54.0% @ 1)  lr 0.01  1.0 s"
    )
    no_val = {"epoch": 3, "lr": 0.1, "train_loss": 1.0, "train_acc": 0.25}  # G-Blend's head networks: no validation
    assert epoch_line(no_val, 4, 0.5, "val_accuracy", None) == "epoch 4/4  train loss 1.000 acc 25.0%  lr 0.1  0.5 s"


def test_a_step_whose_log_is_a_file_writes_epoch_lines_and_no_progress_bar(tiny_workspace, tmp_path):
    log = tmp_path / "train.log"
    with log.open("w") as f:  # as a Snakemake job runs it: stdout and stderr into the log file
        res = subprocess.run(
            [sys.executable, "-m", "benchmark", *TRAIN, "--method", "joint", "--set", "train.epochs=2"]
            + ["--out-dir", str(tmp_path / "run")],
            cwd=tiny_workspace,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    text = log.read_text()
    assert res.returncode == 0, text[-3000:]
    assert "\r" not in text and "epochs:" not in text  # no bar
    epochs = [line for line in text.splitlines() if " epoch " in line and "train loss" in line]
    assert [line.split("  ")[0].split(" ", 1)[1] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("val acc" in line and "(best" in line for line in epochs) and "epoch=" not in text
    assert "done: epoch" in text and "selected on validation" in text


# --- progress bars --------------------------------------------------------------------------------------------------
def test_progress_bars_are_drawn_on_a_terminal_only(monkeypatch):
    logs.setup()
    terminal, pipe = Terminal(), io.StringIO()
    assert logs.progress_enabled(terminal) and not logs.progress_enabled(pipe)
    items = [1, 2, 3]
    assert logs.progress(items, desc="clips", file=pipe) is items  # untouched: the same work either way
    assert list(logs.progress(items, desc="clips", file=terminal)) == items
    assert "\r" in terminal.getvalue() and "clips" in terminal.getvalue() and "/3" in terminal.getvalue()
    assert isinstance(logs.bar(10, file=pipe), logs._NoBar)
    with logs.bar(10, "bytes", file=terminal) as shown:
        shown.update(4)
    logs.setup(-1)  # -q: warnings only, and no bars
    assert not logs.progress_enabled(terminal)
    logs.setup()
    monkeypatch.setenv(logs.PROGRESS_ENV, "0")
    assert not logs.progress_enabled(terminal)
    monkeypatch.setenv(logs.PROGRESS_ENV, "1")
    assert logs.progress_enabled(pipe)


def test_a_step_without_a_bar_logs_every_tenth():
    assert sorted(logs.milestones(48)) == [5, 10, 15, 20, 24, 29, 34, 39, 44, 48]
    assert sorted(logs.milestones(3)) == [1, 2, 3] and logs.milestones(0) == set()


def test_log_lines_are_short_and_honour_the_level(capsys, monkeypatch):
    logs.setup()
    log = logging.getLogger("benchmark.example")
    log.info("hello")
    log.debug("hidden")
    log.warning("careful")
    err = capsys.readouterr().err.splitlines()
    assert [line.split(" ", 1)[1] for line in err] == ["hello", "warning: careful"]
    assert len(err[0].split(" ", 1)[0]) == len("12:00:00")
    monkeypatch.setenv(logs.LEVEL_ENV, "debug")
    logs.setup()
    log.debug("shown")
    assert capsys.readouterr().err.split(" ", 1)[1] == "debug: shown\n"


# --- the end of a DAG run ---------------------------------------------------------------------------------------------
def hand_made_results(root: Path) -> tuple[dict, list]:
    """A results folder of a 3-run grid (+1 n/a): one ok, one diverged, one whose job failed (in a Snakemake log)."""
    cfg = tiny_config(balancers=["joint", "ogm", "multi_loss", "mmcosine"], fusions=["gated"])
    (root / "s.yaml").write_text(yaml.safe_dump(cfg))
    cfg = validate_config(cfg)
    runs, skipped = grid_runs(cfg)
    assert len(runs) == 3 and len(skipped) == 1  # mmcosine does not take a gated fusion
    folders = [Resolver(cfg).run(spec).path for spec in runs]
    for folder, record in zip(folders, ({"status": "ok"}, {"status": "failed", "reason": "loss became nan"})):
        (root / folder).mkdir(parents=True)
        (root / folder / "metrics.json").write_text(json.dumps(record))
    (root / folders[2]).mkdir(parents=True)
    (root / folders[2] / "train.log").write_text("Traceback ...\n")
    board = root / "results/default"
    board.mkdir(parents=True)
    (board / "leaderboard.csv").write_text("method,status\njoint,ok\nogm,failed\nmmcosine,n/a\n")
    (board / "report.html").write_text("<html></html>")
    log = root / ".snakemake/log/2026-01-01T000000.000000.snakemake.log"
    log.parent.mkdir(parents=True)
    log.write_text(
        "Building DAG of jobs...\n[Thu Jan  1 00:00:00 2026]\nError in rule train:\n    message: None\n    jobid: 3\n"
        f"    output: {folders[2]}/metrics.json\n"
        f"    log: {folders[2]}/train.log (check log file(s) for error details)\n    shell:\n        python -m ...\n"
        "Exiting because a job execution failed. Look above for error messages\n"
    )
    return cfg, folders


def test_the_summary_counts_the_runs_and_names_the_failed_jobs_logs(tmp_path, monkeypatch, capsys):
    _, folders = hand_made_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["summary", "--config", "s.yaml"]) == 0  # the newest Snakemake log by default
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "experiment 'default': 4 runs: 1 ok, 1 failed, 1 not run, 1 n/a"
    assert f"    ogm synthetic-av/main/small_cnn/gated seed 0: loss became nan ({folders[1]}/train.log)" in out
    assert out[out.index(next(line for line in out if "jobs that failed (1;" in line)) + 1] == (
        f"    train: {folders[2]}/train.log"
    )
    assert "  leaderboard: results/default/leaderboard.md (also .csv, .tex; 3 rows: 1 ok, 1 failed, 1 n/a)" in out
    assert "  report: results/default/report.html" in out and len(out) < 12


def test_run_ends_with_the_summary_and_a_dry_run_with_full_passes_snakemake_through(tmp_path, monkeypatch, capsys):
    hand_made_results(tmp_path)
    monkeypatch.chdir(tmp_path)
    calls = []

    class Snakemake:  # what run_dag starts: here it "fails" at once
        def __init__(self, cmd: list[str]) -> None:
            calls.append(cmd)
            os.utime(next((tmp_path / ".snakemake/log").iterdir()))  # its log is this run's

        def wait(self) -> int:
            return 1

    monkeypatch.setattr(subprocess, "Popen", Snakemake)
    assert cli.run_dag(["--configfile", "s.yaml", "--cores", "1", "--set", "train.epochs=1"]) == 1
    out = capsys.readouterr().out
    assert calls[0][-6:] == ["--configfile", "s.yaml", "--cores", "1", "--config", 'set=["train.epochs=1"]']
    assert "DAG run failed (exit status 1)" in out and "1 ok, 1 failed, 1 not run, 1 n/a" in out
    assert "    train: results/runs/" in out
    assert cli.run_dag(["-n", "--full", "--configfile", "s.yaml"]) == 1
    assert "--full" not in calls[1] and "-n" in calls[1] and "DAG run" not in capsys.readouterr().out


def test_the_dry_run_of_the_default_config_is_a_table_of_jobs_per_rule(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "benchmark", "run", "-n"], cwd=tmp_path, capture_output=True, text=True, env=ENV
    )
    assert res.returncode == 0, res.stderr[-3000:]
    lines = res.stdout.splitlines()
    runs, _ = grid_runs(validate_config(yaml.safe_load((REPO / "config.yaml").read_text())))
    table = [line.split() for line in lines if line.startswith("  ") and len(line.split()) == 2]
    counts = {rule: int(n) for rule, n in table}
    total = counts.pop("total")
    assert counts["train"] == len(runs) and counts["download"] == counts["aggregate"] == 1
    assert lines[0] == f"dry run: {total} jobs would run" and total == sum(counts.values())
    assert len(lines) < 20 and "--full" in lines[-1]
    assert not (tmp_path / "results").exists()


def test_the_dry_run_summary_reads_snakemakes_job_stats():
    output = (
        "Building DAG of jobs...\nJob stats:\njob       count\n------  -------\ndownload        1\ntrain          "
        "30\nall             1\ntotal          32\n\nReasons:\n    ...\n"
    )
    assert logs.job_stats(output) == {"download": 1, "train": 30, "all": 1}
    summary = logs.dry_run_summary(output)
    assert summary[0] == "dry run: 32 jobs would run" and ["train", "30"] in [line.split() for line in summary]
    assert logs.dry_run_summary("Nothing to be done (all requested files are present and up to date).")[0] == (
        "dry run: nothing to do: every output is current"
    )


# --- one-line errors -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        ([*TRAIN, "--method", "nope"], "error: unknown balancer 'nope'; known balancers: "),
        (
            ["preprocess", "--dataset", "synthetic-av"],
            "manifest.csv is missing: run `python -m benchmark download --dataset synthetic-av` first",
        ),
        (
            [*TRAIN, "--method", "joint", "--set", "tuning.enabled=false"],
            "info.json is missing: run `python -m benchmark preprocess --set tuning.enabled=false --dataset "
            "synthetic-av` first",
        ),
        ([*TRAIN, "--method", "joint"], "best.json is missing: run `python -m benchmark tune-trial --dataset"),
        (["check", "--set", "train.epohcs=2"], "error: config error at 'train.epohcs'"),
        (["preprocess", "--dataset", "nope"], "error: unknown dataset 'nope'"),
        (["balance", "--dataset", "synthetic-av"], "error: dataset 'synthetic-av' has no 'balance' section"),
    ],
)
def test_user_errors_are_one_line_with_the_fix_and_exit_status_2(argv, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing made: every input is missing
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert expected in err


def test_debug_adds_the_traceback_and_the_entry_point_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["preprocess", "--dataset", "synthetic-av", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.splitlines()[-1].startswith("error: data/raw/synthetic-av/")
    res = subprocess.run(
        [sys.executable, "-m", "benchmark", "split", "--dataset", "synthetic-av"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert (
        res.returncode == 2 and len(res.stderr.splitlines()) == 1 and "run `python -m benchmark download" in res.stderr
    )


def test_a_missing_artefact_names_the_step_that_makes_it():
    args = argparse.Namespace(config=["my.yaml"], set=None)
    hint = cli.missing_input_hint
    assert hint("results/gblend/d/main/small_cnn/concat/gblend-audio+visual/seed3-0123456789ab.json", args) == (
        "python -m benchmark estimate --config my.yaml --dataset d --fold main --backbone small_cnn --fusion concat "
        "--seed 3 --modalities audio+visual"
    )
    split = hint("data/processed/d/0123456789ab/splits/0123456789ab/fold1.csv", args)
    assert split == "python -m benchmark split --config my.yaml --dataset d --fold fold1"
    assert hint("/abs/results/runs/d/main/b/none/unimodal-audio/seed0-0123456789ab/model.pt", args).endswith(
        "train --config my.yaml --dataset d --fold main --backbone b --fusion none --method unimodal-audio --seed 0"
    )
    assert hint("data/processed/d/0123456789ab/shards/00003.pt", args).endswith(
        "preprocess --config my.yaml --dataset d"
    )
    assert hint("somewhere/else.csv", args) is None


# --- a fast start ----------------------------------------------------------------------------------------------------
def test_the_cli_imports_neither_torch_nor_the_components():
    heavy = "('torch', 'benchmark.components', 'benchmark.config', 'pandas')"
    code = f"import sys, benchmark.cli; print([m for m in {heavy} if m in sys.modules])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, check=True)
    assert res.stdout.strip() == "[]"
    from benchmark.components import AXES

    assert cli.AXES == AXES
