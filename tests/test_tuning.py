"""Fair tuning: seeded random search per group, search spaces checked against the components, trials that never read
the test split, best-trial selection, tuned final runs, and a tiny tuning run through the DAG."""

from __future__ import annotations

import copy
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from benchmark import search, tuning
from benchmark.config import ConfigError, settings_hash, validate_config
from benchmark.grid import RunSpec
from benchmark.settings import Resolver, Step
from tests.conftest import run_dir, tiny_config, untuned_config


def run_hash(cfg: dict, spec: RunSpec) -> str:
    return Resolver(cfg).run(spec).identity


SPACE = {
    "train": {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "scale": "log"}},
    "balancers": {
        "ogm": {"alpha": {"low": 0.1, "high": 1.0}, "end_epoch": {"low": 2, "high": 9, "type": "int"}},
        "mlb": {"beta_max": {"choices": [2, 5, 10]}},
    },
}


def tuned_config(trials: int = 3, **grid) -> dict:
    cfg = tiny_config(**grid)
    cfg["tuning"] = {
        "enabled": True,
        "strategy": "random",
        "trials": trials,
        "seed": 0,
        "train_seed": 0,
        "space": copy.deepcopy(SPACE),
    }
    return cfg


def test_random_search_is_seeded_per_group_and_trial_and_stays_in_range():
    cfg = validate_config(tuned_config(trials=50))
    ogm = RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0)
    draws = [search.trial_params(cfg, ogm, k) for k in range(50)]
    assert draws[3] == search.trial_params(
        cfg, RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 1), 3
    )  # seed-free group
    assert set(draws[0]) == {"train.optimizer.lr", "balancer.alpha", "balancer.end_epoch"}
    lrs = np.array([d["train.optimizer.lr"] for d in draws])
    assert lrs.min() >= 1e-3 and lrs.max() <= 1e-1 and (np.log10(lrs) < -2).mean() > 0.3  # log scale: half below 0.01
    assert all(0.1 <= d["balancer.alpha"] <= 1.0 and isinstance(d["balancer.end_epoch"], int) for d in draws)
    assert len({d["balancer.alpha"] for d in draws}) == 50
    joint = search.trial_params(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0), 3)
    assert (
        set(joint) == {"train.optimizer.lr"} and joint["train.optimizer.lr"] != draws[3]["train.optimizer.lr"]
    )  # another group
    mlb = [
        search.trial_params(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "mlb", 0), k)["balancer.beta_max"]
        for k in range(50)
    ]
    assert set(mlb) == {2, 5, 10}
    cfg["tuning"]["seed"] = 1
    assert search.trial_params(cfg, ogm, 3) != draws[3]


def test_search_space_errors_name_the_key():
    for space, key in (
        ({"balancers": {"ogm": {"alfa": {"low": 0.1, "high": 1}}}}, "tuning.space.balancers.ogm.alfa"),
        ({"train": {"optimizer.lrate": {"low": 0.1, "high": 1}}}, "tuning.space.train.optimizer.lrate"),
        ({"train": {"optimizer.lr": {"low": 1, "high": 0.1}}}, "tuning.space.train.optimizer.lr"),
        (
            {"fusions": {"gated": {"hidden": {"low": 0, "high": 64, "scale": "log"}}}},
            "tuning.space.fusions.gated.hidden",
        ),
    ):
        cfg = tuned_config()
        cfg["tuning"]["space"] = space
        with pytest.raises(ConfigError) as err:
            validate_config(cfg)
        assert err.value.key == key, (key, str(err.value))


def test_tuning_off_keeps_every_run_hash_and_on_changes_it():
    cfg = validate_config(untuned_config())
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0)
    without = copy.deepcopy(cfg)
    del without["tuning"]
    assert run_hash(cfg, spec) == run_hash(without, spec)
    on = copy.deepcopy(cfg)
    on["tuning"]["enabled"] = True
    assert run_hash(on, spec) != run_hash(cfg, spec)
    changed = copy.deepcopy(on)
    changed["tuning"]["space"]["balancers"]["ogm"]["alpha"]["high"] = 0.9
    assert run_hash(changed, spec) != run_hash(on, spec)  # a new space retunes the group
    assert run_hash(changed, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)) == run_hash(
        on, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)
    )


def test_best_trial_is_the_highest_validation_score_earliest_on_ties(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = validate_config(tuned_config(trials=4))
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0)
    scores = [("ok", 0.5), ("failed", None), ("ok", 0.75), ("ok", 0.75)]
    resolver = Resolver(cfg)
    for k, (status, score) in enumerate(scores):
        path = resolver.resolve(Step("tune_trial", spec, k)).path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            json.dumps(
                {
                    "trial": k,
                    "params": {"balancer.alpha": 0.1 * (k + 1)},
                    "status": status,
                    "val_score": score,
                    "metric": "validation accuracy",
                    "history": [{}] * (k + 1),
                }
            )
        )
    best = tuning.select_best(cfg, spec, log=lambda s: None)
    assert best["trial"] == 2 and best["params"] == {"balancer.alpha": pytest.approx(0.3)} and best["val_score"] == 0.75
    assert best["budget"] == {"trials": 4, "epochs_trained": 10}
    settings = resolver.training_settings(resolver.run(spec))
    assert settings["balancer"]["params"]["alpha"] == pytest.approx(0.3) and settings["tuning"]["best_trial"] == 2
    with pytest.raises(FileNotFoundError, match="tune stage"):
        resolver.training_settings(resolver.run(RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)))


def test_trials_never_read_the_test_split(tiny_workspace, monkeypatch):
    """A trial of every kind (plain, with an inline G-Blend estimate) runs while reading 'test' raises; a final run
    under the same guard fails, which shows the guard works."""
    from benchmark.data import splits
    from benchmark.run import execute_run

    monkeypatch.chdir(tiny_workspace)
    real = splits.read_split

    def guarded(processed_dir, fold, part, *rest):
        if part == "test":
            raise AssertionError("the test split was read")
        return real(processed_dir, fold, part, *rest)

    monkeypatch.setattr(splits, "read_split", guarded)
    cfg = validate_config(tuned_config(trials=2, balancers=["ogm", "gblend"]))
    cfg["balancers"]["gblend"]["estimate_epochs"] = 1
    for method in ("ogm", "gblend"):
        spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
        record = tuning.run_trial(cfg, spec, 1, tiny_workspace / f"trial-{method}.json", log=lambda s: None)
        assert record["status"] == "ok" and record["loaded_parts"] == ["train", "val"] and 0 <= record["val_score"] <= 1
        assert record["params"] == search.trial_params(cfg, spec, 1)
    assert json.loads((tiny_workspace / "trial1.gblend_weights.json").read_text())[
        "holdout_clip_ids"
    ]  # estimated from train
    plain = copy.deepcopy(cfg)
    plain["tuning"]["enabled"] = False
    with pytest.raises(AssertionError, match="test split was read"):
        execute_run(plain, RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0), log=lambda s: None)


@pytest.mark.slow
def test_tiny_tuning_run_through_the_dag_lists_the_chosen_hyperparameters(tmp_path):
    from tests.test_workflow import job_counts, snakemake

    cfg = tuned_config(trials=3, balancers=["joint", "ogm"])
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    dry = snakemake(tmp_path, "-n", configfile=tmp_path / "tune.yaml")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert (
        job_counts(dry.stdout)["tune_trial"] == 6 and job_counts(dry.stdout)["tune_select"] == 2
    )  # 2 methods × 3 trials
    res = snakemake(tmp_path, configfile=tmp_path / "tune.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    resolver = Resolver(validate_config(cfg))
    for method in ("joint", "ogm"):
        spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
        group = tmp_path / resolver.resolve(Step("tune_best", spec)).path
        trials = [json.loads((group / f"trial{k}.json").read_text()) for k in range(3)]
        assert all(t["loaded_parts"] == ["train", "val"] for t in trials)  # no trial job loaded the test split
        assert [t["config_hash"] for t in trials] == [
            settings_hash(resolver.resolve(Step("tune_trial", spec, k)).settings) for k in range(3)
        ]
        best = json.loads((group / "best.json").read_text())
        assert best["val_score"] == max(t["val_score"] for t in trials) and best["budget"]["trials"] == 3
        metrics = json.loads((tmp_path / run_dir(cfg, spec) / "metrics.json").read_text())
        assert metrics["settings"]["tuning"]["chosen"] == best["params"]
        assert math.isclose(metrics["settings"]["train"]["optimizer"]["lr"], best["params"]["train.optimizer.lr"])
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv").set_index("method")
    assert (board["trials"] == 3).all() and board.loc["ogm", "hyperparameters"].startswith("alpha ")
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert "tuned on validation** (3 trials" in md and "| tuned hyperparameters | trials |" in md
    # the switch: paper defaults retrain the final runs without tuning, and the leaderboard says so
    cfg["tuning"]["enabled"] = False
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    off = snakemake(tmp_path, configfile=tmp_path / "tune.yaml")
    assert off.returncode == 0, off.stderr[-3000:]
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert "**paper defaults**" in md and "| tuned hyperparameters |" not in md
    # results made elsewhere (no Snakemake metadata here, as in a fresh clone of committed results) still rerun when
    # the config changes what they record: a changed method parameter reruns that method, tuning reruns everything
    shutil.rmtree(tmp_path / ".snakemake" / "metadata")
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(
        snakemake(tmp_path, "-n", configfile=tmp_path / "tune.yaml")
    )
    cfg["balancers"]["ogm"]["start_epoch"] = 1  # not searched: it changes ogm's runs and trials
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    changed = snakemake(tmp_path, "-n", configfile=tmp_path / "tune.yaml")
    assert job_counts(changed.stdout).get("train") == 1 and "method=ogm" in changed.stdout
    cfg["tuning"]["enabled"] = True
    (tmp_path / "tune.yaml").write_text(yaml.safe_dump(cfg))
    tuned = job_counts(snakemake(tmp_path, "-n", configfile=tmp_path / "tune.yaml").stdout)
    # ogm's 3 trials and its final run rerun (their settings changed); joint's tuning and tuned run, made by the first
    # invocation under the same identities, are current
    assert tuned.get("train") == 1 and tuned.get("tune_trial") == 3


def test_a_killed_trial_resumes_from_its_checkpoint_to_the_same_result(tiny_workspace, monkeypatch, tmp_path):
    monkeypatch.chdir(tiny_workspace)
    cfg = tuned_config(trials=1, balancers=["crash_once"])
    cfg["balancers"]["crash_once"] = {"class": "tests.failing_methods:CrashOnce"}
    cfg["train"]["epochs"] = 3
    cfg = validate_config(cfg)
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "crash_once", 0)
    marker = tiny_workspace / "crashed-once-seed0"
    marker.unlink(missing_ok=True)
    logs: list[str] = []
    with pytest.raises(RuntimeError, match="simulated node failure"):
        tuning.run_trial(cfg, spec, 0, tmp_path / "a/trial0.json", log=logs.append)
    assert (tmp_path / "a/trial0.checkpoint.pt").exists()
    resumed = tuning.run_trial(cfg, spec, 0, tmp_path / "a/trial0.json", log=logs.append)
    assert any("resumed" in line and "after epoch 1/3" in line for line in logs)
    fresh = tuning.run_trial(
        cfg, spec, 0, tmp_path / "b/trial0.json", log=lambda s: None
    )  # the marker exists: no crash
    assert resumed["history"] == fresh["history"] and resumed["val_score"] == fresh["val_score"]
    assert not (tmp_path / "a/trial0.checkpoint.pt").exists()
    marker.unlink()
