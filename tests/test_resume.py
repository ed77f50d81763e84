"""Resume after preemption, failure isolation and determinism of one training job."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import benchmark.train as train_module
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.leaderboard import StaleResult
from benchmark.run import train_run
from benchmark.settings import Resolver
from tests.conftest import run_dir


@pytest.fixture
def tiny_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"]["gblend_online"].update(first_super_epoch=1, super_epoch=2)
    return validate_config(cfg)


def quiet(_: str) -> None:
    pass


def without_timing(path: Path) -> str:
    """The metrics file's text up to its last section, 'timing' (the only part allowed to differ between executions)."""
    text = path.read_text()
    head, sep, _ = text.partition('\n "timing": {')
    assert sep, "timing must be the metrics file's last section"
    return head


def test_same_job_twice_gives_byte_identical_metrics_apart_from_timing(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "mlb", 0)
    train_run(tiny_cfg, spec, tmp_path / "a", log=quiet)
    train_run(tiny_cfg, spec, tmp_path / "b", log=quiet)
    assert without_timing(tmp_path / "a/metrics.json") == without_timing(tmp_path / "b/metrics.json")
    m = json.loads((tmp_path / "a/metrics.json").read_text())
    assert m["config_hash"] and m["provenance"]["git_commit"] and m["provenance"]["device"].startswith("cpu")
    assert {"torch", "snakemake", "scipy"} <= set(m["provenance"]["packages"])
    assert not (tmp_path / "a/checkpoint.pt").exists()  # dropped once the run is complete


@pytest.mark.parametrize("method", ["ogm_ge", "mlb", "gblend_online", "agm", "pmr", "mslr", "modality_dropout"])
def test_resuming_from_any_epoch_checkpoint_reproduces_the_uninterrupted_run(tiny_cfg, tmp_path, monkeypatch, method):
    """Keep the checkpoint written after epoch 2 of 4, then start the job again from it as a retried job would."""
    resume_reproduces(tiny_cfg, RunSpec("synthetic-av", "small_cnn", "concat", method, 0), tmp_path, monkeypatch)


def resume_reproduces(cfg: dict, spec: RunSpec, tmp_path, monkeypatch) -> tuple[dict, dict]:
    """Train ``spec`` for its 4 epochs keeping the checkpoint written after epoch 2, then run the job again from that
    checkpoint; assert that it resumed and wrote the same metrics (timing aside). Returns both runs' records."""
    original = train_module.save_checkpoint

    def keep_epoch_two(path, state):
        original(path, state)
        if state["epoch"] == 1:
            shutil.copy(path, tmp_path / "after-epoch-2.pt")

    monkeypatch.setattr(train_module, "save_checkpoint", keep_epoch_two)
    full = train_run(cfg, spec, tmp_path / "full", log=quiet)
    monkeypatch.setattr(train_module, "save_checkpoint", original)
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "after-epoch-2.pt", tmp_path / "resumed/checkpoint.pt")
    lines: list[str] = []
    resumed = train_run(cfg, spec, tmp_path / "resumed", log=lines.append)
    assert any("resumed from" in line and "after epoch 2/4" in line for line in lines)
    assert resumed["timing"]["resumed_after_epoch"] == 1 and full["timing"]["resumed_after_epoch"] is None
    assert without_timing(tmp_path / "full/metrics.json") == without_timing(tmp_path / "resumed/metrics.json")
    return full, resumed


def test_a_checkpoint_of_other_settings_is_ignored(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)
    (tmp_path / "run").mkdir()
    torch.save({"settings_hash": "something else", "epoch": 2}, tmp_path / "run/checkpoint.pt")
    lines: list[str] = []
    m = train_run(tiny_cfg, spec, tmp_path / "run", log=lines.append)
    assert any("ignoring checkpoint" in line for line in lines) and len(m["history"]) == 4


def _train_command(config: Path, out_dir: Path, method: str = "ogm_ge") -> list[str]:
    return [
        sys.executable,
        "-m",
        "benchmark",
        "train",
        "--config",
        str(config),
        "--dataset",
        "synthetic-av",
        "--fold",
        "main",
        "--backbone",
        "small_cnn",
        "--fusion",
        "concat",
        "--method",
        method,
        "--seed",
        "0",
        "--out-dir",
        str(out_dir),
    ]


@pytest.mark.slow
def test_sigkill_mid_training_then_rerun_resumes_to_identical_metrics(in_tiny_workspace, tmp_path):
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 12
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(cfg))
    reference = subprocess.run(
        _train_command(config, tmp_path / "reference"), capture_output=True, text=True, cwd=in_tiny_workspace
    )
    assert reference.returncode == 0, reference.stderr[-2000:]

    out = tmp_path / "killed"
    with open(tmp_path / "attempt1.log", "w") as log:
        proc = subprocess.Popen(
            _train_command(config, out), stdout=log, stderr=subprocess.STDOUT, cwd=in_tiny_workspace
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (out / "checkpoint.pt").exists() and torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "training finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    killed_at = torch.load(out / "checkpoint.pt", weights_only=False)["epoch"]
    assert 3 <= killed_at < 11

    again = subprocess.run(_train_command(config, out), capture_output=True, text=True, cwd=in_tiny_workspace)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"after epoch {killed_at + 1}/12" in again.stderr  # the log goes to stderr
    assert without_timing(out / "metrics.json") == without_timing(tmp_path / "reference/metrics.json")


def test_divergence_fails_the_run_with_a_reason_and_the_leaderboard_shows_it(in_tiny_workspace, tmp_path):
    from benchmark.aggregate import aggregate

    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 8
    cfg["grid"] = {
        "datasets": ["synthetic-av"],
        "backbones": ["small_cnn"],
        "fusions": ["concat"],
        "balancers": ["joint", "ogm"],
        "seeds": [0],
    }
    good = validate_config(cfg)
    cfg["train"]["optimizer"]["lr"] = 1.0e12  # absurd: the loss overflows within a few epochs
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0)
    ogm_dir = in_tiny_workspace / run_dir(good, spec)  # where the good config looks for it (the bad one has another)
    res = subprocess.run(_train_command(bad, ogm_dir, "ogm"), capture_output=True, text=True, cwd=in_tiny_workspace)
    assert res.returncode == 0, res.stderr[-2000:]  # a diverged run is a result, not a crash: the grid goes on
    m = json.loads((ogm_dir / "metrics.json").read_text())
    assert m["status"] == "failed" and "diverged" in m["reason"] and len(m["history"]) < 8
    assert torch.load(ogm_dir / "model.pt", weights_only=True)["status"] == "failed"
    train_run(good, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0), log=quiet)
    with pytest.raises(StaleResult, match="other settings"):  # the diverged run was made with lr 1e12: refused
        aggregate(good, tmp_path / "board")
    record = json.loads((ogm_dir / "metrics.json").read_text())  # as if the good config had diverged
    record["identity"] = Resolver(good).run(spec).record()
    (ogm_dir / "metrics.json").write_text(json.dumps(record))
    aggregate(good, tmp_path / "board")
    board = pd.read_csv(tmp_path / "board/leaderboard.csv").set_index("method")
    assert (
        board.loc["ogm", "status"] == "failed"
        and "diverged" in board.loc["ogm", "reason"]
        and board.loc["ogm", "runs"] == 0
    )
    assert board.loc["joint", "status"] == "ok"
    assert "failed: training loss became" in (tmp_path / "board/leaderboard.md").read_text()
