"""The sharded cache: shards equal one whole cache, a rerun redoes only what is missing (also after a kill), the gather
step refuses incomplete or foreign shards, and batches gather across shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from benchmark.config import dataset_settings, validate_config
from benchmark.data.cache import CachedSplit
from benchmark.data.datasets import DATASETS
from benchmark.data.preprocess import PreprocessError, gather_shards, preprocess
from benchmark.data.shards import INDEX, shard_bounds, shard_count, shard_record, shard_tensors
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def whole(cache: CachedSplit) -> dict:
    return {**cache.__getitems__(list(range(len(cache)))), "clip_id": cache.clip_ids}


@pytest.fixture
def tiny(tiny_workspace, tiny_dirs):
    """The tiny dataset, its raw folder, its preprocessing settings and its cache (of one shard) as the DAG made it."""
    settings = dataset_settings(validate_config(tiny_config()), "synthetic-av")
    ds = DATASETS.get("synthetic-av")(settings)
    return ds, tiny_workspace / tiny_dirs.raw, settings["preprocess"], tiny_workspace / tiny_dirs.processed


def test_shard_bounds_cover_the_manifest_once():
    assert shard_count(0, 10) == 1 and shard_count(10, 10) == 1 and shard_count(11, 10) == 2
    assert [shard_bounds(k, 25, 10) for k in range(3)] == [(0, 10), (10, 20), (20, 25)]
    with pytest.raises(ValueError, match="shard 3 does not exist: 25 rows in shards of 10 make 3"):
        shard_bounds(3, 25, 10)


def test_shards_hold_what_one_cache_holds_and_a_rerun_redoes_only_missing_shards(tmp_path, tiny):
    ds, raw, pre, processed = tiny
    one = whole(CachedSplit(processed))
    assert len(CachedSplit(processed).shards) == 1
    out = tmp_path / "proc"
    decoded = []
    info = preprocess(ds, raw, out, pre, workers=2, log=decoded.append, shard_clips=10)
    assert [s["clips"] for s in info["shards"]] == [10, 10, 10, 10, 8] and info["clips"] == 48
    sharded = whole(CachedSplit(out))
    assert sharded["clip_id"] == one["clip_id"]
    for key in ("audio", "visual", "label"):
        assert torch.equal(sharded[key], one[key]), key
    assert (out / INDEX).read_text().splitlines()[11] == f"{one['clip_id'][10]},00001,0"

    # a lost shard (a preempted job): only it is decoded again, the others stay as they were
    kept = {k: shard_tensors(out, k).stat().st_mtime_ns for k in (0, 1, 3, 4)}
    shard_tensors(out, 2).unlink()
    shard_record(out, 2).unlink()
    decoded.clear()
    preprocess(ds, raw, out, pre, workers=2, log=decoded.append, shard_clips=10)
    assert [line.split(":")[0] for line in decoded if "rows " in line] == ["[preprocess] shard 3/5"]
    assert {k: shard_tensors(out, k).stat().st_mtime_ns for k in (0, 1, 3, 4)} == kept
    assert torch.equal(whole(CachedSplit(out))["visual"], one["visual"])


def test_gather_refuses_missing_and_foreign_shards(tmp_path, tiny):
    ds, raw, pre, _ = tiny
    out = tmp_path / "proc"
    preprocess(ds, raw, out, pre, workers=2, log=lambda s: None, shard_clips=16)
    shard_record(out, 1).unlink()
    with pytest.raises(PreprocessError, match=r"1 of 3 shards .* missing .* \(first: 00001\).* --shard 1"):
        gather_shards(ds, raw, out, pre, 16, log=lambda s: None)
    preprocess(ds, raw, out, pre, workers=2, log=lambda s: None, shard_clips=16)
    record = json.loads(shard_record(out, 2).read_text())
    shard_record(out, 2).write_text(json.dumps({**record, "settings_hash": "0" * 16}))
    with pytest.raises(PreprocessError, match="made with other settings"):
        gather_shards(ds, raw, out, pre, 16, log=lambda s: None)


def test_batches_gather_across_shards_in_the_asked_order(tmp_path, tiny):
    ds, raw, pre, processed = tiny
    out = tmp_path / "proc"
    preprocess(ds, raw, out, pre, workers=2, log=lambda s: None, shard_clips=7)
    sharded, one = CachedSplit(out), CachedSplit(processed)
    assert len(sharded.shards) == 7
    positions = [44, 0, 13, 6, 7, 30, 13]  # positions in the view of clips 3-47: across shards, repeated
    a, b = sharded.subset(range(3, 48)), one.subset(range(3, 48))
    for key, value in a.__getitems__(positions).items():
        assert torch.equal(value, b.__getitems__(positions)[key]), key
    assert a.ids() == b.ids()


def test_a_killed_preprocess_step_resumes_with_the_unfinished_shards(tmp_path, tiny_workspace, tiny_dirs):
    # the step by hand, as a job would run it, killed once its first shard is on disk
    cfg = tiny_config()
    cfg["resources"] = {"preprocess": {"shard_clips": 6}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "proc"
    raw = tiny_workspace / tiny_dirs.raw
    cmd = [sys.executable, "-m", "benchmark", "preprocess", "--config", str(tmp_path / "config.yaml")]
    cmd += ["--dataset", "synthetic-av", "--raw", str(raw), "--out", str(out), "--workers", "1"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    job = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not shard_record(out, 0).exists() and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.05)
    job.send_signal(signal.SIGKILL)
    job.wait()
    done = sorted(int(p.stem) for p in (out / "shards").glob("*.json"))
    assert done and len(done) < 8 and not (out / "info.json").exists()
    before = {k: shard_tensors(out, k).stat().st_mtime_ns for k in done}
    rerun = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "cached 48 clips in 8 shards" in rerun.stdout
    assert {k: shard_tensors(out, k).stat().st_mtime_ns for k in done} == before
    # the log goes to stderr, each line after its time: "12:00:01 [preprocess] shard 3/8: rows 12-17, ..."
    redone = [line.split(" ", 1)[1].split(":")[0] for line in rerun.stderr.splitlines() if "rows " in line]
    assert redone == [f"[preprocess] shard {k + 1}/8" for k in range(8) if k not in done]
