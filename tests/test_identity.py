"""Run identity and the one settings resolution: what changes an identity and what does not, prerequisites inside
identities, one way to read a config (layers, --set, Snakemake's --config), and the leaderboard refusing results
made with other settings."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmark import settings as settings_module
from benchmark.aggregate import aggregate
from benchmark.config import ConfigError, load_config, parse_set, typed, validate_config
from benchmark.grid import RunSpec
from benchmark.leaderboard import StaleResult
from benchmark.settings import Resolver, Step
from tests.conftest import REPO, tiny_config, untuned_config

OGM = RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 0)


def identity(cfg: dict, spec: RunSpec = OGM, kind: str = "run") -> str:
    return Resolver(validate_config(cfg)).resolve(Step(kind, spec)).identity


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["train"].update(epochs=3),
        lambda c: c["train"]["optimizer"].update(lr=0.02),
        lambda c: c["balancers"]["ogm"].update(alpha=0.3),
        lambda c: c["backbones"]["small_cnn"].update(width=8),
        lambda c: c["datasets"]["synthetic-av"]["preprocess"]["audio"].update(n_mels=16),
        lambda c: c["datasets"]["synthetic-av"]["generate"].update(seed=1),
        lambda c: c["evaluation"].update(ece_bins=10),
        lambda c: c["tuning"].update(enabled=True),
    ],
)
def test_every_setting_that_can_change_numbers_changes_the_identity(change):
    cfg = untuned_config()
    before = identity(cfg)
    change(cfg)
    assert identity(cfg) != before


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(experiment="another"),
        lambda c: c["resources"]["train"].update(mem_mb=1000, gpus=0),
        lambda c: c["leaderboard"].update(alpha=0.01),
        lambda c: c["balancers"]["mlb"].update(alpha=0.3),  # another method's parameter
        lambda c: c["grid"][0]["seeds"].append(7),  # the grid's other runs
        lambda c: c["tuning"]["space"]["balancers"]["ogm"].update(alpha={"low": 0.2, "high": 0.9}),  # tuning is off
    ],
)
def test_what_cannot_change_a_runs_numbers_leaves_its_identity(change):
    cfg = untuned_config()
    before = identity(cfg)
    change(cfg)
    assert identity(cfg) == before


def test_seed_fold_and_method_are_part_of_the_identity_and_of_the_path():
    cfg = validate_config(untuned_config())
    r = Resolver(cfg)
    ids = {
        r.run(RunSpec("synthetic-av", "small_cnn", "concat", m, s)).identity for m in ("ogm", "ogm_ge") for s in (0, 1)
    }
    assert len(ids) == 4
    path = r.run(OGM).path
    assert path.parts[:-1] == ("results", "runs", "synthetic-av", "main", "small_cnn", "concat", "ogm")
    assert re.fullmatch(r"seed0-[0-9a-f]{12}", path.name) and path.name.endswith(r.run(OGM).identity)


def test_a_numerics_version_bump_changes_every_identity(monkeypatch):
    before = identity(untuned_config())
    monkeypatch.setattr(settings_module, "NUMERICS_VERSION", settings_module.NUMERICS_VERSION + 1)
    assert identity(untuned_config()) != before


def test_prerequisites_are_part_of_the_identity_of_the_runs_that_read_them():
    cfg = validate_config(untuned_config())
    r = Resolver(cfg)
    pretrain = r.run(RunSpec("synthetic-av", "small_cnn", "concat", "pretrain", 0))
    for m in ("audio", "visual"):
        unimodal = r.run(RunSpec("synthetic-av", "small_cnn", "none", "unimodal", 0, m))
        assert pretrain.artifacts()[f"unimodal_checkpoint/{m}"] == unimodal.path / "model.pt"
        assert pretrain.record()["prerequisites"][f"unimodal_checkpoint/{m}"] == unimodal.identity
    gblend = r.run(RunSpec("synthetic-av", "small_cnn", "concat", "gblend", 0))
    estimate = r.resolve(Step("estimate", RunSpec("synthetic-av", "small_cnn", "concat", "gblend", 0)))
    assert gblend.artifacts() == {"gblend_weights": estimate.path}
    # a change of the estimate alone (its held-out fraction is a G-Blend parameter, so the run changes too)
    changed = copy.deepcopy(untuned_config())
    changed["balancers"]["gblend"]["holdout_fraction"] = 0.2
    assert identity(changed, estimate.spec, "estimate") != estimate.identity


def test_tuned_runs_name_their_tuning_and_every_trial_is_in_the_groups_identity():
    cfg = untuned_config()
    cfg["tuning"]["enabled"] = True
    cfg["tuning"]["trials"] = 3
    r = Resolver(validate_config(cfg))
    run = r.run(OGM)
    best = r.resolve(Step("tune_best", OGM))
    assert run.artifacts()["tuning_best"] == best.path / "best.json"
    assert [p.file.name for p in best.prerequisites] == ["trial0.json", "trial1.json", "trial2.json"]
    assert r.resolve(Step("tune_trial", OGM, 1)).path == best.path / "trial1.json"
    assert (
        r.run(RunSpec("synthetic-av", "small_cnn", "concat", "ogm", 1)).artifacts()["tuning_best"]
        == best.path / "best.json"
    )
    more = copy.deepcopy(cfg)
    more["tuning"]["trials"] = 4
    assert identity(more, kind="tune_best") != best.identity and identity(more) != run.identity


def test_resolved_settings_are_frozen():
    r = Resolver(validate_config(untuned_config()))
    run = r.run(OGM)
    run.settings["train"]["epochs"] = 99  # a copy
    assert run.settings["train"]["epochs"] == untuned_config()["train"]["epochs"]
    with pytest.raises(AttributeError):
        run.identity = "x"  # type: ignore[misc]


# --- one way to read a config ---------------------------------------------------------------------------------------
def test_layers_merge_mappings_replace_lists_and_sets_are_typed(tmp_path):
    overlay = tmp_path / "o.yaml"
    overlay.write_text(
        yaml.safe_dump(
            {
                "train": {"epochs": 2},
                "grid": {
                    "datasets": ["synthetic-av"],
                    "backbones": ["small_cnn"],
                    "fusions": ["concat"],
                    "balancers": ["joint"],
                    "seeds": [0],
                },
            }
        )
    )
    cfg = load_config(
        [overlay], ["balancers.ogm_ge.alpha=0.5", "train.optimizer={name: adam, lr: 0.002}"], base=REPO / "config.yaml"
    )
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["batch_size"] == 32  # merged key by key
    assert cfg["grid"] == [
        {
            "datasets": ["synthetic-av"],
            "backbones": ["small_cnn"],
            "fusions": ["concat"],
            "balancers": ["joint"],
            "seeds": [0],
        }
    ]  # lists replace
    assert cfg["balancers"]["ogm_ge"]["alpha"] == 0.5 and isinstance(cfg["balancers"]["ogm_ge"]["alpha"], float)
    assert cfg["train"]["optimizer"] == {"name": "adam", "lr": 0.002, "momentum": 0.9, "weight_decay": 1.0e-4}
    assert parse_set("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert typed({"train": {"epochs": "2", "device": "auto"}}) == {"train": {"epochs": 2, "device": "auto"}}


def test_a_misspelt_override_names_its_key_path():
    with pytest.raises(ConfigError) as err:
        load_config(sets=["train.epohcs=2"], base=REPO / "config.yaml")
    assert err.value.key == "train.epohcs" and "did you mean 'epochs'" in str(err.value)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        load_config(sets=["train.epochs"], base=REPO / "config.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(sets=["experiment=runs"], base=REPO / "config.yaml")
    assert err.value.key == "experiment"


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmark", *args], capture_output=True, text=True, cwd=cwd)


def test_check_reads_an_overlay_over_the_base_config(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("experiment: small\ntrain: {epochs: 2}\n")
    res = _cli("check", "--config", str(overlay), "--set", "leaderboard.alpha=0.01")
    assert res.returncode == 0, res.stderr
    assert "valid; experiment 'small'" in res.stdout
    bad = _cli("check", "--set", "train.epohcs=2")
    assert (
        bad.returncode == 2
        and bad.stderr.startswith("error: config error at 'train.epohcs'")
        and "Traceback" not in bad.stderr
    )


def _dry_run_paths(tmp_path: Path, *args: str) -> set[str]:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "tiny.yaml"),
            *args,
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return set(re.findall(r"results/runs/\S+?/metrics\.json", res.stdout))


def test_the_dag_and_a_step_run_by_hand_resolve_the_same_overrides(tmp_path):
    cfg = tiny_config(balancers=["joint"])
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    expected = (
        Resolver(load_config([tmp_path / "tiny.yaml"], ["train.epochs=2"], base=REPO / "config.yaml"))
        .run(RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0))
        .path
        / "metrics.json"
    )
    assert _dry_run_paths(tmp_path, "--config", "train={epochs: 2}") == {str(expected)}  # Snakemake's own syntax, typed
    assert _dry_run_paths(tmp_path, "--config", 'set=["train.epochs=2"]') == {str(expected)}  # what run.sh --set passes
    # the job's command line carries the same layers, so the step run by hand reads what the DAG read
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path),
            "--configfile",
            str(tmp_path / "tiny.yaml"),
            "--config",
            "train={epochs: 2}",
        ],
        capture_output=True,
        text=True,
    )
    train = next(line for line in res.stdout.splitlines() if " -m benchmark train " in line)
    assert f"--config {tmp_path / 'tiny.yaml'}" in train and "--set 'train={\"epochs\": 2}'" in train
    assert f"--id {expected.parent.name.split('-')[-1]}" in train


# --- a table never mixes settings -----------------------------------------------------------------------------------
def test_aggregate_refuses_a_result_whose_identity_is_not_the_configs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = validate_config(tiny_config(balancers=["joint"]))
    run = Resolver(cfg).run(RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0))
    run.path.mkdir(parents=True)
    other = copy.deepcopy(cfg)
    other["train"]["epochs"] = 8
    stale = Resolver(validate_config(other)).run(RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0))
    (run.path / "metrics.json").write_text(json.dumps({"status": "ok", "identity": stale.record()}))
    with pytest.raises(StaleResult) as err:
        aggregate(cfg, tmp_path / "board")
    assert (
        str(run.path / "metrics.json") in str(err.value)
        and stale.identity in str(err.value)
        and run.identity in str(err.value)
    )
    assert not (tmp_path / "board").exists()  # nothing written
    (run.path / "metrics.json").write_text(
        json.dumps({"status": "ok", "config_hash": "0123"})
    )  # made before identities
    with pytest.raises(StaleResult, match="made before runs had identities"):
        aggregate(cfg, tmp_path / "board")


def test_prune_removes_only_what_no_experiment_uses(tmp_path, monkeypatch):
    from benchmark.prune import prune
    from benchmark.run import write_json
    from benchmark.settings import experiment_record

    monkeypatch.chdir(tmp_path)
    cfg = validate_config(tiny_config(balancers=["joint", "gblend", "pretrain"]))
    record = experiment_record(cfg)
    write_json(tmp_path / f"results/default/runs-{record['identity']}.json", record)
    assert any("/gblend/" in s for s in record["steps"]) and any("unimodal-audio" in s for s in record["steps"])
    for step in record["steps"]:
        path = tmp_path / step
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}") if step.endswith(".json") else path.mkdir()
    old = tmp_path / "results/runs/synthetic-av/main/small_cnn/concat/joint/seed0-0123456789ab"
    old.mkdir(parents=True)
    (old / "metrics.json").write_text("{}")
    old_estimate = tmp_path / "results/gblend/synthetic-av/main/small_cnn/concat/gblend/seed0-0123456789ab.json"
    old_estimate.write_text("{}")
    assert prune(tmp_path, [], delete=False, log=lambda s: None) == [
        old.relative_to(tmp_path),
        old_estimate.relative_to(tmp_path),
    ]
    assert old.exists()
    prune(tmp_path, [], delete=True, log=lambda s: None)
    assert not old.exists() and not old_estimate.exists() and all((tmp_path / s).exists() for s in record["steps"])


def test_a_cache_made_with_other_dataset_settings_is_refused(tiny_workspace, tiny_dirs):
    from benchmark.config import dataset_settings
    from benchmark.data.cache import load_info

    cfg = validate_config(yaml.safe_load((tiny_workspace / "config.yaml").read_text()))
    processed = tiny_workspace / tiny_dirs.processed
    settings = dataset_settings(cfg, "synthetic-av")
    assert load_info(processed, settings)["clips"] > 0
    settings["split"] = {"anything": 1}  # the split is a stage of its own: not part of the cache's settings
    load_info(processed, settings)
    settings["preprocess"]["audio"]["n_mels"] += 1
    with pytest.raises(ValueError, match="made with other settings of dataset 'synthetic-av'") as refused:
        load_info(processed, settings)
    from benchmark import cli

    assert isinstance(refused.value, cli._user_errors())  # by hand: one line with the fix, no traceback
