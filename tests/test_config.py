"""Bad configs stop before any job is built, with a message naming the key path."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from benchmark.config import ConfigError, load_config, validate_config
from benchmark.grid import grid_runs
from benchmark.registry import Registry, UnknownNameError
from tests.conftest import REPO


def error_of(cfg) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    return info.value


def test_default_config_is_valid_and_fills_defaults(cfg):
    del cfg["train"]["eval_batch_size"]
    out = validate_config(cfg)
    assert out["train"]["eval_batch_size"] == 256


def test_misspelt_key_is_named_with_a_suggestion(cfg):
    cfg["train"]["epohcs"] = 3
    err = error_of(cfg)
    assert err.key == "train.epohcs"
    assert "did you mean 'epochs'" in str(err)


def test_misspelt_nested_key(cfg):
    cfg["datasets"]["synthetic-av"]["preprocess"]["audio"]["n_mel"] = 40
    assert error_of(cfg).key == "datasets.synthetic-av.preprocess.audio.n_mel"


def test_wrong_type_names_the_key(cfg):
    cfg["train"]["epochs"] = "ten"
    err = error_of(cfg)
    assert err.key == "train.epochs" and "integer" in str(err)


def test_out_of_range_value(cfg):
    cfg["balancers"]["mlb"]["beta_max"] = 0.5
    assert error_of(cfg).key == "balancers.mlb.beta_max"


@pytest.mark.parametrize(
    "axis,name,key,value,message",
    [
        ("balancers", "ogm_ge", "alpha", "0.8", "valid number"),  # a string is not converted
        ("balancers", "ogm_ge", "alpha", True, "valid number"),  # nor a bool
        ("balancers", "ogm_ge", "alpha", -0.1, "greater than 0"),
        ("balancers", "ogm_ge", "modulate", "linear", "'conv', 'declared' or 'all'"),
        ("balancers", "ogm_ge", "end_epoch", 2.5, "valid integer"),
        ("balancers", "gblend", "holdout_fraction", 0.5, "less than 0.5"),
        ("balancers", "gblend", "estimate_epochs", 0, "greater than or equal to 1"),
        ("balancers", "mslr", "initial", {"audio": 0}, "greater than 0 at audio"),
        ("balancers", "dropout", "p", 1.0, "less than 1"),
        ("fusions", "transformer", "heads", 0, "greater than or equal to 1"),
        ("fusions", "nl_gate", "queries", [], "at least 1 item"),
        ("backbones", "small_cnn", "weights", 3, "valid string"),
    ],
)
def test_parameters_are_checked_against_what_the_class_declares(cfg, axis, name, key, value, message):
    cfg[axis].setdefault(name, {})[key] = value
    if name not in cfg["grid"][0][axis]:
        cfg["grid"][0][axis].append(name)
    err = error_of(cfg)
    assert err.key == f"{axis}.{name}.{key}" and message in str(err), str(err)
    cfg[axis][name].pop(key)
    validate_config(cfg)  # the declared default is valid


def test_a_built_in_methods_parameters_have_no_schema_entry_of_their_own():
    """Declared once, in the class: adding a built-in method touches its own module only."""
    from benchmark.config import load_schema

    schema = load_schema()
    for axis in ("balancers", "fusions", "backbones"):
        assert "properties" not in schema["properties"][axis], axis


@pytest.mark.parametrize(
    "axis,bad", [("balancers", "ogmm"), ("fusions", "concatt"), ("backbones", "resnet19"), ("datasets", "cremad2")]
)
def test_unknown_name_in_grid_lists_known_names(cfg, axis, bad):
    blocks = cfg["grid"] if isinstance(cfg["grid"], list) else [cfg["grid"]]
    blocks[0][axis].append(bad)
    err = error_of(cfg)
    where = "grid[0]" if len(blocks) > 1 else "grid"
    assert err.key == f"{where}.{axis}[{len(blocks[0][axis]) - 1}]"
    assert f"'{bad}'" in str(err) and "known" in str(err)
    if axis == "balancers":
        assert "ogm_ge" in str(err) and "mlb" in str(err)


def test_unknown_entry_in_a_method_section(cfg):
    cfg["balancers"]["olb"] = {"alpha": 1}
    err = error_of(cfg)
    assert err.key == "balancers.olb" and "known balancers" in str(err)


@pytest.mark.parametrize("axis", ["datasets", "backbones", "fusions", "balancers", "seeds"])
def test_empty_grid_axis(cfg, axis):
    cfg["grid"] = cfg["grid"][0]  # a single block
    cfg["grid"][axis] = []
    err = error_of(cfg)
    assert err.key == f"grid.{axis}" and "nothing to run" in str(err)
    cfg["grid"] = []
    assert "grid" in error_of(cfg).key


def test_missing_grid(cfg):
    del cfg["grid"]
    assert "grid" in str(error_of(cfg))


def test_user_class_parameters_are_checked(cfg, tmp_path, monkeypatch):
    (tmp_path / "my_methods.py").write_text(
        "from benchmark.balancers.joint import Joint\n"
        "class Mine(Joint):\n"
        "    def __init__(self, *, gamma: float = 1.0):\n"
        "        super().__init__()\n        self.gamma = gamma\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg["balancers"]["mine"] = {"class": "my_methods:Mine", "gama": 2}
    cfg["grid"][0]["balancers"].append("mine")
    err = error_of(cfg)
    assert err.key == "balancers.mine.gama" and "gamma" in str(err)
    cfg["balancers"]["mine"] = {"class": "my_methods:Nope"}
    assert error_of(cfg).key == "balancers.mine.class"
    cfg["balancers"]["mine"] = {"class": "my_methods:Mine", "gamma": 2}
    runs, _ = grid_runs(validate_config(cfg))
    assert any(r.balancer == "mine" for r in runs)


def test_registry_unknown_name_and_duplicates():
    reg: Registry = Registry("widget")

    @reg.register("a")
    class A:
        pass

    with pytest.raises(UnknownNameError, match="unknown widget 'b'; known widgets: a"):
        reg.get("b")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(type("B", (), {}))


def test_snakemake_stops_on_a_bad_config_before_building_jobs(tmp_path, cfg):
    cfg["train"]["epohcs"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
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
            str(bad),
            "--cores",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "train.epohcs" in res.stdout + res.stderr
    assert "Job stats" not in res.stdout + res.stderr


def test_cli_list_and_check():
    out = subprocess.run(
        [sys.executable, "-m", "benchmark", "list", "balancers", "--names"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == sorted(
        [
            "joint",
            "unimodal",
            "ogm",
            "ogm_ge",
            "multi_loss",
            "mlb",
            "gblend",
            "gblend_online",
            "aux_loss",
            "mslr",
            "agm",
            "pmr",
            "mmcosine",
            "modality_dropout",
            "dropout",
            "pretrain",
            "early_stop",
            "mmpareto",
            "opm",
            "opg",
            "cggm",
            "mbsd",
            "amco",
            "reconboost",
            "umt",
            "ume",
            "mla",
            "relearning",
            "greedy",
            "inforeg",
            "amss",
            "dimml",
            "lfm",
            "valuation",
        ]
    )
    expected = {
        "fusions": ["concat", "sum", "mid_mlp", "film", "gated", "transformer", "lmf"],
        "backbones": ["resnet18", "small_cnn", "conformer", "r2plus1d_18", "mlp", "sequence", "text"],
        "datasets": ["synthetic-av", "features", "cmu_mosi", "cmu_mosei", "food101"],
        "input_kinds": ["vector", "sequence", "tokens", "image", "spectrogram", "frames", "flow"],
    }
    for axis, names in expected.items():
        listed = subprocess.run(
            [sys.executable, "-m", "benchmark", "list", axis, "--names"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert set(names) <= set(listed), axis
    full = REPO / "configs" / "full-grid.yaml"  # the widest named experiment: it has n/a combinations
    res = subprocess.run(
        [sys.executable, "-m", "benchmark", "check", "--config", str(full)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    runs, _ = grid_runs(load_config([full], [], REPO / "config.yaml"))
    assert (
        res.returncode == 0
        and f"{len(runs)} training runs" in res.stdout
        and "n/a: synthetic-av/small_cnn/gated/mmcosine" in res.stdout
    )


def test_per_backbone_training_overrides(cfg):
    from benchmark.config import train_settings

    cfg["train"]["per_backbone"] = {"resnet18": {"epochs": 2, "optimizer": {"lr": 0.5}}}
    out = validate_config(cfg)
    r18, small = train_settings(out, "resnet18"), train_settings(out, "small_cnn")
    assert (
        r18["epochs"] == 2
        and r18["optimizer"]["lr"] == 0.5
        and r18["optimizer"]["momentum"] == small["optimizer"]["momentum"]
    )
    assert small["epochs"] == cfg["train"]["epochs"] and "per_backbone" not in r18
    cfg["train"]["per_backbone"] = {"resnet18": {"epohcs": 2}}
    assert error_of(cfg).key == "train.per_backbone.resnet18.epohcs"
    cfg["train"]["per_backbone"] = {"resnet81": {"epochs": 2}}
    assert error_of(cfg).key == "train.per_backbone.resnet81"


def test_grid_may_be_a_list_of_blocks(cfg):
    block = {**cfg["grid"][0], "backbones": ["small_cnn", "resnet18"]}
    cfg["grid"] = [block, {**block, "backbones": ["small_cnn"], "balancers": ["joint", "agm"], "seeds": [0, 5]}]
    out = validate_config(cfg)
    runs, _ = grid_runs(out)
    assert len(runs) == len(set(runs))  # joint/small_cnn/seed 0 is in both blocks, trained once
    assert {r.balancer for r in runs if r.backbone == "resnet18"} == set(block["balancers"])
    assert {(r.balancer, r.seed) for r in runs if r.balancer == "agm"} == {("agm", 0), ("agm", 5)}
    cfg["grid"][1]["balancers"] = ["agm", "agmm"]
    assert error_of(cfg).key == "grid[1].balancers[1]"
    cfg["grid"][1]["balancers"] = []
    assert error_of(cfg).key == "grid[1].balancers"
    cfg["grid"][1]["balancers"] = ["agm"]
    cfg["grid"][1]["seed"] = [0]
    assert error_of(cfg).key == "grid[1].seed"
