"""Reruns that are right by construction, on real Snakemake runs: a fresh clone of committed results trains
nothing (also after data/ is rebuilt), an added method trains exactly its runs, a changed hyperparameter exactly the
affected runs and once, a dry run writes no file, a deleted run folder trains again, another experiment leaves the
committed one byte-identical, and a table never mixes settings."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, tiny_config
from tests.test_workflow import job_counts, run_path, snakemake

pytestmark = pytest.mark.slow


def files(root: Path) -> dict[str, str]:
    """Every file under ``root`` (Snakemake's own folder aside) with its content digest."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".snakemake" not in p.parts
    }


def committed(root: Path) -> dict[str, str]:
    """What `git add results` would commit there (the .gitignore leaves out logs and weights)."""
    return {
        k: v
        for k, v in files(root).items()
        if k.startswith("results/") and not k.startswith("results/logs/") and not k.endswith((".pt", ".log"))
    }


def counts(res: subprocess.CompletedProcess) -> dict[str, int]:
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-3000:]
    return {} if "Nothing to be done" in out else job_counts(out)


def test_reruns_are_right_by_construction(tmp_path):
    first, clone = tmp_path / "first", tmp_path / "clone"
    first.mkdir()
    cfg = tiny_config(balancers=["joint", "ogm"])
    overlay = first / "tiny.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    assert counts(snakemake(first, configfile=overlay))["train"] == 2

    # a fresh clone: the committed files only (no data/, no weights, no logs, no Snakemake metadata), new mtimes
    for name in committed(first):
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(first / name, clone / name)
    overlay = clone / "tiny.yaml"
    overlay.write_text(yaml.safe_dump(cfg))
    before = committed(clone)
    assert counts(snakemake(clone, "-n", configfile=overlay)) == {}
    assert counts(snakemake(clone, configfile=overlay)) == {} and committed(clone) == before

    # a dry run of a changed config writes no file anywhere
    cfg["grid"]["balancers"].append("multi_loss")
    overlay.write_text(yaml.safe_dump(cfg))
    everything = files(clone)
    dry = counts(snakemake(clone, "-n", configfile=overlay))
    assert files(clone) == everything
    # an added method trains exactly its runs (data/ is rebuilt for it; the other runs stay current)
    assert dry == {"download": 1, "preprocess": 1, "split": 1, "train": 1, "aggregate": 1, "all": 1, "total": 6}
    assert "method=multi_loss" in snakemake(clone, "-n", configfile=overlay).stdout
    assert counts(snakemake(clone, configfile=overlay))["train"] == 1
    assert all(committed(clone)[k] == v for k, v in before.items() if k.startswith("results/runs/"))
    assert counts(snakemake(clone, "-n", configfile=overlay)) == {}

    # a changed hyperparameter trains exactly the affected runs, once; the next invocation has nothing to do
    cfg["balancers"]["ogm"]["alpha"] = 0.3
    overlay.write_text(yaml.safe_dump(cfg))
    changed = snakemake(clone, configfile=overlay)
    log = changed.stdout + changed.stderr
    assert counts(changed)["train"] == 1 and "method=ogm" in log and "method=joint" not in log
    assert counts(snakemake(clone, "-n", configfile=overlay)) == {}
    # data/ rebuilt (deleted, made again by a new method's runs) retrains nothing that exists
    shutil.rmtree(clone / "data")
    shutil.rmtree(clone / ".snakemake")
    cfg["grid"]["seeds"] = [0, 1]
    overlay.write_text(yaml.safe_dump(cfg))
    seeds = snakemake(clone, configfile=overlay)
    trained = [
        line for line in (seeds.stdout + seeds.stderr).splitlines() if "wildcards:" in line and "method=" in line
    ]
    assert counts(seeds)["train"] == 3 and len(trained) == 3 and all("seed=1" in line for line in trained)
    # a deleted run folder trains again, also without Snakemake's metadata
    ogm = run_path(clone, overlay, "ogm")
    shutil.rmtree(ogm)
    shutil.rmtree(clone / ".snakemake")
    again = snakemake(clone, configfile=overlay)
    assert counts(again)["train"] == 1 and (ogm / "metrics.json").exists()

    # another experiment (other settings, its own view) leaves the committed one byte-identical
    view = {k: v for k, v in committed(clone).items() if k.startswith(("results/default/", "results/runs/"))}
    other = json.loads(json.dumps(cfg))
    other.update(experiment="short")
    other["train"]["epochs"] = 2
    other["grid"] = {**cfg["grid"], "balancers": ["joint"], "seeds": [0]}
    (clone / "short.yaml").write_text(yaml.safe_dump(other))
    assert counts(snakemake(clone, configfile=clone / "short.yaml"))["train"] == 1
    assert {k: v for k, v in committed(clone).items() if k in view} == view
    assert (clone / "results/short/leaderboard.md").exists() and "experiment `short`" in (
        clone / "results/short/leaderboard.md"
    ).read_text()

    # the mixed-settings sequence: a result made with other settings where the config's run belongs is refused
    joint_default, joint_short = run_path(clone, overlay, "joint"), run_path(clone, clone / "short.yaml", "joint")
    shutil.copyfile(joint_short / "metrics.json", joint_default / "metrics.json")
    res = subprocess.run(
        [sys.executable, "-m", "benchmark", "aggregate", "--config", str(overlay)],
        cwd=clone,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert (
        f"{joint_default.relative_to(clone)}/metrics.json records identity {joint_short.name.split('-')[-1]}"
        in res.stderr
    )
