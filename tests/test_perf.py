"""The performance benchmark runs (tiny mode) and reports every measure; no timing thresholds are asserted here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_perf_tiny_prints_the_table_and_writes_json(tmp_path):
    out = tmp_path / "perf.json"
    res = subprocess.run(
        [sys.executable, "-m", "benchmark", "perf", "--tiny", "--out", str(out), "--workdir", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for row in (
        "| train joint (samples/s; ×joint time) |",
        "| train ogm_ge",
        "| train mlb",
        "| train gblend",
        "G-Blend estimate step",
        "data wait, built-in",
        "data wait, real-size 257×188 + 3×224²",
        "preprocess, 1 worker(s)",
        "snakemake -n, 2 training jobs",
    ):
        assert row in res.stdout, row
    report = json.loads(out.read_text())
    assert set(report["training"]) == {"joint", "ogm_ge", "mlb", "gblend"} and all(
        v > 0 for v in report["training"].values()
    )
    for w in (report["data_wait_builtin"], report["data_wait_real_size"]):  # timings: arithmetic, not noise
        assert w["steps"] >= 1 and w["pure_s"] > 0 and w["with_loader_s"] > 0
        assert w["fraction"] == pytest.approx((w["with_loader_s"] - w["pure_s"]) / w["with_loader_s"])
    steps = report["step_overhead"]  # bare vs the harness's whole step, each with its spread
    assert {"bare", "bare, deterministic off", "joint", "joint, channels-last", "ogm_ge", "ogm"} <= set(steps)
    assert all(0 < steps[k]["min"] <= steps[k]["median"] <= steps[k]["max"] for k in ("bare", "joint", "ogm_ge"))
    assert report["dry_run"]["train_jobs"] == 2 and report["dry_run"]["seconds"] > 0
    assert report["preprocess_clips_per_s"]["1"] > 0 and report["device"].startswith("cpu")
    assert not (REPO / "data/raw/synthetic-av-w1").exists()  # the scratch workspace, not the repository, holds its data


@pytest.mark.slow
def test_perf_data_tiny_measures_shards_decoding_dry_run_and_a_sharded_cache(tmp_path):
    out = tmp_path / "perf-data.json"
    cmd = [sys.executable, "-m", "benchmark", "perf", "--data", "--tiny", "--out", str(out), "--workdir", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    sizes = [(r["clips"], r["shards"]) for r in report["preprocess"]]
    assert sizes == [(8, 2), (16, 4)] and report["one_shard"]["shards"] == 1 and report["one_shard"]["clips"] == 16
    assert all(r["peak_rss_mb_shard_job"] > 0 and r["clips_per_s"] > 0 for r in report["preprocess"])
    assert len(report["decoding"]) == 3 and all(v > 0 for v in report["decoding"].values())
    assert report["dry_run"]["shard_jobs"] == 200 and report["dry_run"]["clips"] == 2000
    k = report["kill_resume"]  # the rerun after a SIGKILL writes exactly the shards the killed job had not finished
    assert k["shards"] == 4 and k["rewritten_by_rerun"] == k["shards"] - k["complete_at_kill"]
    assert k["indexed_clips"] == 16 and k["batch_shapes"]["audio"][0] == 16
    r = report["read_under_memory_limit"]  # read whole by a memory-capped process, where a cgroup can be made
    assert r.get("skipped", "").startswith("no writable memory cgroup") or (
        r["returncode"] == 0 and r["clips_read"] == r["clips"] and r["peak_cgroup_gb"] <= r["limit_gb"]
    ), r
    w = report["data_wait_large_cache"]  # a timing on a loaded CI machine: its value is noise, its arithmetic is not
    assert w["shards"] >= 1 and w["pure_s"] > 0 and w["with_loader_s"] > 0
    assert w["fraction"] == pytest.approx((w["with_loader_s"] - w["pure_s"]) / w["with_loader_s"])
    for row in ("shard-job memory", "snakemake -n, 2,000-clip manifest, 200 shard jobs", "data wait, 0.0 GB sharded"):
        assert row in res.stdout, row
    assert not list(tmp_path.glob("tree-*")) and not (tmp_path / "large-cache").exists()  # scratch cleaned up


def test_perf_methods_measures_the_named_balancers_against_joint(tmp_path):
    out = tmp_path / "perf.json"
    out.write_text(json.dumps({"training": {"agm": 1.0}}))  # an earlier full report: merged into, not replaced
    # umt reads unimodal teachers, which perf stands in for with the initial encoders
    cmd = [sys.executable, "-m", "benchmark", "perf", "--methods", "mbsd,umt", "--tiny", "--out", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["training"]) == {"agm", "joint", "mbsd", "umt"} and report["training"]["mbsd"] > 0
    assert "| mbsd |" in res.stdout and "time × joint" in res.stdout
    bad = subprocess.run(cmd[:5] + ["nope", "--tiny", "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode != 0 and "unknown balancer 'nope'" in bad.stderr
