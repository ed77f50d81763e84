"""The `cluster` profile against a real Slurm: a single-node cluster on this host (scripts/local-slurm.sh).

Such a minimal cluster has no accounting database, so the invocation adds what a site with one does not need:
``--slurm-status-command squeue`` (the plugin's default, sacct, never sees a job finish here) and
``--slurm-no-account`` (no accounts to look up). Both stay here, not in the user-facing profile.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, tiny_config
from tests.test_workflow import run_path

TEST_ONLY_FLAGS = [
    "--slurm-status-command",
    "squeue",
    "--slurm-no-account",
    "--slurm-init-seconds-before-status-checks",
    "1",
]


def slurm_is_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    res = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True)
    return res.returncode == 0 and any(state.strip() in ("idle", "mix", "alloc") for state in res.stdout.splitlines())


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[None]:
    """A running Slurm: the one on this host, or a single-node cluster started for the test (root only)."""
    if slurm_is_up():  # a Slurm this test did not start: used as it is, left running
        yield
        return
    can_start = os.geteuid() == 0 and all(shutil.which(x) for x in ("slurmctld", "slurmd", "munged", "sbatch"))
    if not can_start:
        if os.environ.get("CI"):
            pytest.fail("CI needs Slurm: scripts/system-deps.sh installs slurmctld, slurmd, slurm-client and munge")
        pytest.skip("no Slurm here and it cannot be started (needs root and the slurm packages)")
    state = tmp_path_factory.mktemp("slurm")
    res = subprocess.run(
        ["bash", str(REPO / "scripts/local-slurm.sh"), "start", str(state)], capture_output=True, text=True
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert slurm_is_up()
    yield
    # stopped with the module: left running, its state folder (pytest's temporary one) is deleted by a later
    # pytest run and the next sbatch fails with an I/O error
    subprocess.run(["bash", str(REPO / "scripts/local-slurm.sh"), "stop", str(state)], capture_output=True)


def cluster_run(workdir: Path, cfg: dict) -> subprocess.CompletedProcess:
    (workdir / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--profile",
        str(REPO / "workflow/profiles/cluster"),
        "--configfile",
        str(workdir / "tiny.yaml"),
        *TEST_ONLY_FLAGS,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200)


@pytest.mark.slow
def test_tiny_grid_runs_under_slurm_as_one_array_and_a_crashed_job_resumes_on_retry(slurm, tmp_path):
    shutil.copy(REPO / "tests/failing_methods.py", tmp_path / "failing_methods.py")
    cfg = tiny_config(balancers=["joint", "ogm"], seeds=[0, 1])
    cfg["train"]["epochs"] = 3
    cfg["resources"]["train"].update(gpus=0, mem_mb=1000, runtime=10)  # this node has no GPU and little memory
    cfg["resources"]["preprocess"].update(mem_mb=1000, runtime=10)
    res = cluster_run(tmp_path, cfg)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]

    # every training job ran inside Slurm, and the four of them went out as one array job
    runs = sorted((tmp_path / "results/runs").rglob("metrics.json"))
    assert len(runs) == 4
    timings = [json.loads(p.read_text())["timing"] for p in runs]
    assert len({t["slurm_array_job_id"] for t in timings}) == 1 and len({t["slurm_job_id"] for t in timings}) == 4
    submissions = re.findall(r"has been submitted with SLURM jobid|Submitted array job", out)
    assert len(submissions) == 2, out[-4000:]  # preprocess, then one array for the 4 runs
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv")
    assert set(board["method"]) == {"joint", "ogm"} and (board["status"] == "ok").all() and (board["runs"] == 2).all()
    assert (tmp_path / "results/default/report.html").exists()

    # a method added later trains only its own job; it crashes in epoch 2, the profile's retry resumes it
    cfg["balancers"]["crash_once"] = {"class": "failing_methods:CrashOnce"}
    cfg["grid"] = [cfg["grid"], {**cfg["grid"], "balancers": ["crash_once"], "seeds": [0]}]
    res = cluster_run(tmp_path, cfg)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert len(re.findall(r"has been submitted with SLURM jobid", out)) == 2  # the first attempt and its retry
    run = run_path(tmp_path, tmp_path / "tiny.yaml", "crash_once")
    assert "after epoch 1/3" in (run / "train.log").read_text()  # the retry's log (Snakemake starts it afresh) ...
    assert "simulated node failure" in (run / "failed-attempts.log").read_text()  # ... and why the first attempt died
    assert "simulated node failure" in out  # the profile shows a failed job's log
    m = json.loads((run / "metrics.json").read_text())
    assert (
        m["status"] == "ok"
        and m["timing"]["resumed_after_epoch"] == 0
        and len(m["history"]) == 3
        and m["timing"]["slurm_job_id"]
    )
    assert set(pd.read_csv(tmp_path / "results/default/leaderboard.csv")["method"]) == {"joint", "ogm", "crash_once"}
