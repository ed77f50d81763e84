"""The Snakemake DAG: the default grid's job list, a tiny real run to a leaderboard, the cluster profile."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark.config import load_config
from benchmark.grid import RunSpec
from benchmark.settings import Resolver, Step
from tests.conftest import REPO, data_dirs, fsdd_or_skip, tiny_config


def snakemake(workdir: Path, *args: str, configfile: Path | None = None) -> subprocess.CompletedProcess:
    """Snakemake as run.sh runs it (the default workflow profile), here on 2 cores."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "-d",
        str(workdir),
        "--cores",
        "2",
        "--workflow-profile",
        str(REPO / "workflow/profiles/default"),
    ]
    if configfile:
        cmd += ["--configfile", str(configfile)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True)


def resolved(overlay: Path, spec: RunSpec, kind: str = "run"):
    """A step as the DAG resolves it: the repository's config.yaml with ``overlay`` over it (user classes import from
    the overlay's folder, the DAG's working directory)."""
    if str(overlay.parent) not in sys.path:
        sys.path.insert(0, str(overlay.parent))
    for module in overlay.parent.glob("*.py"):  # another test's module of the same name may be imported already
        cached = sys.modules.get(module.stem)
        if cached is not None and Path(getattr(cached, "__file__", "") or "").parent != overlay.parent:
            del sys.modules[module.stem]
    return Resolver(load_config([overlay], base=REPO / "config.yaml")).resolve(Step(kind, spec))


def run_path(
    workdir: Path,
    overlay: Path,
    method: str,
    seed: int = 0,
    fusion: str = "concat",
    dataset: str = "synthetic-av",
    backbone: str = "small_cnn",
    fold: str = "main",
) -> Path:
    return workdir / resolved(overlay, RunSpec.from_method(dataset, backbone, fusion, method, seed, fold)).path


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M)}


def test_dry_run_of_the_default_config_lists_the_full_grid(tmp_path):
    res = snakemake(tmp_path, "-n", configfile=REPO / "config.yaml")
    assert res.returncode == 0, res.stderr
    counts = job_counts(res.stdout)
    blocks = yaml.safe_load((REPO / "config.yaml").read_text())["grid"]
    first = blocks[0]
    fused = [b for b in first["balancers"] if b != "unimodal"]
    n_seeds, n_bb, n_fu = len(first["seeds"]), len(first["backbones"]), len(first["fusions"])
    expected = n_seeds * n_bb * (len(fused) * n_fu + 2)  # + audio-only, visual-only
    seen = {
        (b, f, bb, s)
        for b in first["balancers"]
        for f in first["fusions"]
        for bb in first["backbones"]
        for s in first["seeds"]
    }
    for block in blocks[1:]:  # the union: combinations already in an earlier block are not trained twice
        for combo in (
            (b, f, bb, s)
            for b in block["balancers"]
            for f in block["fusions"]
            for bb in block["backbones"]
            for s in block["seeds"]
        ):
            if combo not in seen and not (combo[0] == "mmcosine" and combo[1] == "gated"):
                seen.add(combo)
                expected += 1
    assert counts["train"] == expected
    assert counts["estimate"] == n_seeds * n_bb * n_fu  # offline G-Blend runs only in the first block
    assert counts["download"] == counts["preprocess"] == counts["split"] == counts["aggregate"] == 1
    for balancer in {b for block in blocks for b in block["balancers"]} - {"mmcosine"}:
        assert f"method={balancer}" in res.stdout


@pytest.mark.slow
def test_tiny_real_run_produces_a_leaderboard_and_is_idempotent(tmp_path):
    cfg = tiny_config(balancers=["joint", "ogm"])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "tiny.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv")
    assert set(board["method"]) == {"joint", "ogm"} and (board["status"] == "ok").all() and (board["runs"] == 1).all()
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert "| joint | concat | 1 |" in md and "| ogm | concat | 1 |" in md
    assert (tmp_path / "results/default/plots/synthetic-av__small_cnn.png").stat().st_size > 1000
    ogm = run_path(tmp_path, tmp_path / "tiny.yaml", "ogm")
    assert ogm.parent.name == "ogm" and ogm.name.startswith("seed0-")
    downloads = list((tmp_path / "results/logs/download").glob("synthetic-av-*.log"))
    raw = data_dirs(load_config([tmp_path / "tiny.yaml"], base=REPO / "config.yaml")).raw
    assert [d.name for d in downloads] == [f"synthetic-av-{raw.name}.log"]
    for log in (downloads[0], ogm / "train.log"):
        assert log.stat().st_size > 0
    assert "epoch 1/1  train loss" in (ogm / "train.log").read_text()
    again = snakemake(tmp_path, "-n", configfile=tmp_path / "tiny.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    # a changed method hyperparameter retrains that method only
    cfg["balancers"]["ogm"]["alpha"] = 0.3
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    changed = snakemake(tmp_path, "-n", configfile=tmp_path / "tiny.yaml")
    counts = job_counts(changed.stdout)
    assert counts.get("train") == 1 and "method=ogm" in changed.stdout and "method=joint" not in changed.stdout
    # a method added to the grid trains only that method's runs
    cfg["balancers"]["ogm"]["alpha"] = 0.8
    cfg["grid"]["balancers"].append("multi_loss")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    added = snakemake(tmp_path, "-n", configfile=tmp_path / "tiny.yaml")
    counts = job_counts(added.stdout)
    assert counts.get("train") == 1 and "method=multi_loss" in added.stdout and "method=ogm" not in added.stdout
    assert counts.get("aggregate") == 1 and not {"download", "preprocess", "split"} & set(counts)


def test_cluster_profile_is_found_from_the_repository_root_and_asks_for_gpus(tmp_path):
    profile = yaml.safe_load((REPO / "cluster" / "config.yaml").read_text())
    assert profile["executor"] == "slurm"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--profile",
            "cluster",
            "-n",
            "-d",
            str(tmp_path),
            "--configfile",
            str(REPO / "config.yaml"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    assert (
        "Using profiles cluster and workflow specific profile profiles/default" in out
    )  # the cluster profile over the default one
    train_block = out.split("rule train:")[1].split("\n\n")[0]
    assert "gpu=1" in train_block
    # download and aggregate stay on the submit host (where they run under Slurm is tested in the Slurm test)
    rules = {p.stem: p.read_text() for p in (REPO / "workflow/rules").glob("*.smk")}
    assert "localrules: download" in rules["download"] and "localrules: aggregate" in rules["aggregate"]
    assert "localrules" not in rules["train"] + rules["estimate"]


@pytest.mark.slow
def test_three_modalities_end_to_end(tmp_path):
    cfg = tiny_config(
        datasets=["synthetic-avm"],
        balancers=["joint", "ogm", "mlb", "gblend", "aux_loss", "modality_dropout", "pretrain"],
    )
    cfg["datasets"]["synthetic-avm"] = cfg["datasets"].pop("synthetic-av")
    cfg["balancers"]["gblend"]["estimate_epochs"] = 1
    (tmp_path / "avm.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "avm.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv")
    assert (board["status"] == "ok").all() and len(board) == 7
    assert {"test_acc_audio_mean", "test_acc_visual_mean", "test_acc_motion_mean"} <= set(board.columns)
    overlay = tmp_path / "avm.yaml"
    for method in ("ogm", "gblend", "pretrain"):
        m = json.loads((run_path(tmp_path, overlay, method, dataset="synthetic-avm") / "metrics.json").read_text())
        assert m["run"]["modalities"] == ["audio", "visual", "motion"]
    assert any(
        "extension" in n
        for n in json.loads((run_path(tmp_path, overlay, "ogm", dataset="synthetic-avm") / "metrics.json").read_text())[
            "notes"
        ]
    )
    estimate = resolved(overlay, RunSpec("synthetic-avm", "small_cnn", "concat", "gblend", 0), "estimate")
    assert set(json.loads((tmp_path / estimate.path).read_text())["weights"]) == {"audio", "visual", "motion", "fused"}
    pretrain = resolved(overlay, RunSpec("synthetic-avm", "small_cnn", "concat", "pretrain", 0))
    for m in ("audio", "visual", "motion"):  # pretrain's inputs, produced by the DAG though unimodal is not in the grid
        assert (tmp_path / pretrain.artifacts()[f"unimodal_checkpoint/{m}"]).exists()


@pytest.mark.slow
def test_user_classes_from_a_module_run_through_the_dag(tmp_path):
    shutil.copy(REPO / "examples/my_methods.py", tmp_path / "my_methods.py")
    cfg = tiny_config(balancers=["joint", "weakest_boost", "mmcosine"], fusions=["concat", "max"])
    cfg["balancers"]["weakest_boost"] = {"class": "my_methods:WeakestBoost", "lam": 0.3}
    cfg["fusions"]["max"] = {"class": "my_methods:MaxFusion", "hidden": 16}
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "user.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv", keep_default_na=False)  # keep the literal "n/a"
    assert set(zip(board["method"], board["fusion"])) == {
        (b, f) for b in ("joint", "weakest_boost", "mmcosine") for f in ("concat", "max")
    }
    status = dict(zip(zip(board["method"], board["fusion"]), board["status"]))
    assert status.pop(("mmcosine", "max")) == "n/a" and set(status.values()) == {"ok"}
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert "| mmcosine | max | 0 |" in md and "n/a: MMCosine normalises" in md
    m = json.loads(
        (run_path(tmp_path, tmp_path / "user.yaml", "weakest_boost", fusion="max") / "metrics.json").read_text()
    )
    assert m["settings"]["balancer"] == {
        "name": "weakest_boost",
        "params": {"lam": 0.3},
        "class": "my_methods:WeakestBoost",
        "presets": [],
    }
    assert "score_audio" in m["history"][0]


@pytest.mark.slow
def test_folds_of_a_real_dataset_through_the_dag(tmp_path):
    from tests import native_trees

    root = tmp_path / "CREMA-D"
    native_trees.cremad_tree(root, actors=range(1001, 1004))
    cfg = tiny_config(datasets=["cremad"], balancers=["joint"])
    cfg["datasets"] = {
        "cremad": {
            "source": {"path": str(root), "max_missing_fraction": 0.1},
            "split": {"scheme": "actor-folds"},
            "preprocess": {
                "audio": {"n_mels": 16, "hop_length": 400},
                "visual": {"fps": 2, "num_frames": 2, "size": 16},
            },
        }
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "c.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stdout + res.stderr)
    assert counts["split"] == 3 and counts["train"] == 3 and counts["preprocess"] == 1  # decoded once, split per fold
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv")
    assert board.loc[0, "runs"] == 3 and board.loc[0, "folds"] == 3
    assert "3 folds (fold1, fold2, fold3)" in (tmp_path / "results/default/leaderboard.md").read_text()
    for fold in ("fold1", "fold2", "fold3"):
        m = json.loads(
            (run_path(tmp_path, tmp_path / "c.yaml", "joint", dataset="cremad", fold=fold) / "metrics.json").read_text()
        )
        assert m["settings"]["fold"] == fold


@pytest.mark.slow
def test_a_crashing_job_leaves_a_log_and_only_it_is_retried(tmp_path):
    shutil.copy(REPO / "tests/failing_methods.py", tmp_path / "failing_methods.py")
    cfg = tiny_config(balancers=["joint", "oom"])
    cfg["balancers"]["oom"] = {"class": "failing_methods:OutOfMemory"}
    (tmp_path / "crash.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "crash.yaml")
    assert res.returncode != 0  # the workflow reports the failure ...
    joint, oom = (run_path(tmp_path, tmp_path / "crash.yaml", m) for m in ("joint", "oom"))
    assert (joint / "metrics.json").exists()  # ... but the other jobs ran (keep-going)
    assert not (oom / "metrics.json").exists()
    assert "CUDA out of memory (simulated)" in (oom / "train.log").read_text()
    assert "CUDA out of memory (simulated)" in (oom / "failed-attempts.log").read_text()
    again = snakemake(tmp_path, "-n", configfile=tmp_path / "crash.yaml")
    counts = job_counts(again.stdout)
    assert counts["train"] == 1 and "method=oom" in again.stdout and "method=joint" not in again.stdout
    assert not {"download", "preprocess", "split"} & set(counts)


@pytest.mark.slow
def test_a_preprocessing_stop_keeps_the_rejection_report_it_points_to(tmp_path):
    from tests import native_trees

    root = tmp_path / "videos"
    native_trees.video_folder_tree(root, with_split=True)
    clips = sorted(root.rglob("*.mp4"))
    for clip in clips[: len(clips) // 2]:  # half the clips unreadable: far more than max_rejected_fraction
        clip.write_bytes(b"not a video")
    cfg = tiny_config(datasets=["video_folder"], balancers=["joint"])
    cfg["datasets"]["video_folder"] = {
        "source": {"path": str(root)},
        "split": {"test_fraction": 0.34},
        "preprocess": {"max_rejected_fraction": 0.05, "visual": {"fps": 1, "num_frames": 1, "size": 16}},
    }
    (tmp_path / "v.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "v.yaml")
    assert res.returncode != 0
    dirs = resolved(tmp_path / "v.yaml", RunSpec("video_folder", "small_cnn", "concat", "joint", 0)).data
    log = (tmp_path / "results/logs/preprocess" / f"video_folder-{dirs[0].parent.name}.log").read_text()
    assert "max_rejected_fraction=0.05" in log
    report = tmp_path / dirs[0].parent / "rejected.csv"
    assert str(report.relative_to(tmp_path)) in log and report.exists()  # the file the error points to survived
    assert sum(1 for _ in report.open()) - 1 == len(clips) // 2  # every rejected clip listed, with its reason


@pytest.mark.slow
def test_avdigits_real_recordings_through_the_dag_in_shards(tmp_path):
    # real speech (FSDD) with real handwriting, a subset: 6 takes of every speaker and digit, the authors' split,
    # cut into 4 shard jobs
    fsdd = fsdd_or_skip()
    cfg = tiny_config(datasets=["avdigits"], balancers=["joint", "ogm_ge"])
    cfg["datasets"] = {"avdigits": {"source": {"path": str(fsdd), "takes": 6}, "split": {"scheme": "official"}}}
    cfg["resources"] = {"preprocess": {"shard_clips": 100}}
    (tmp_path / "d.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "d.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    # shard jobs are known only once the download checkpoint has written the manifest: count the jobs run
    assert len(re.findall(r"^(local)?rule preprocess_shard:", out, flags=re.M)) == 4
    assert len(re.findall(r"^(local)?rule preprocess:", out, flags=re.M)) == 1
    shard_logs = list((tmp_path / "results/logs/preprocess").glob("avdigits-*/*.log"))
    assert sorted(p.stem for p in shard_logs) == ["00000", "00001", "00002", "00003"]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv")
    assert {"joint", "ogm_ge"} <= set(board["method"]) and (board["status"] == "ok").all()
    joint = json.loads(
        (
            run_path(tmp_path, tmp_path / "d.yaml", "joint", dataset="avdigits", fold="official") / "metrics.json"
        ).read_text()
    )
    assert joint["status"] == "ok" and 0.0 <= joint["metrics"]["best"]["test"]["accuracy"] <= 1.0
    again = snakemake(tmp_path, "-n", configfile=tmp_path / "d.yaml")
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
