"""Tensor modalities: the input-kind checks, the generic `features` dataset, encoders chosen per modality, OGM on
encoders without convolutions, the opt-in code hash, and a user's tensor dataset through the DAG."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from benchmark.config import ConfigError, load_config
from benchmark.data.cache import BatchPreparer, CachedSplit
from benchmark.data.kinds import get_kind
from benchmark.data.media import MediaError
from benchmark.data.preprocess import preprocess
from benchmark.grid import RunSpec, dataset_instance, grid_runs
from benchmark.settings import Resolver
from tests.conftest import REPO, default_config, tiny_config

CLASSES = ("a", "b", "c")


def write_feature_tree(root: Path, n: int = 90, fmt: str = "npy", seed: int = 0, bad: bool = True) -> dict:
    """A features folder: `visual` vectors (strong class signal), `audio` sequences (weak), `text` token ids (padded
    with 0), one array per modality and labels.csv with a split column; with ``bad``: one NaN sample, one row with no
    label and one repeated id."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % len(CLASSES)
    visual = (rng.normal(0, 1, (n, 10)) + 1.5 * np.eye(len(CLASSES), 10)[y]).astype(np.float32)
    audio = rng.normal(0, 1, (n, 6, 5)).astype(np.float32)
    audio[:, :4, 0] += 0.8 * y[:, None]
    audio[:, 4:] = 0  # padding rows
    text = np.zeros((n, 7), dtype=np.int64)
    for i in range(n):
        length = 3 + i % 4
        text[i, :length] = rng.integers(4, 12, length)
        text[i, 0] = 1 + y[i]  # the class word
    ids = [f"s{i:03d}" for i in range(n)]
    labels = [CLASSES[k] for k in y]
    splits = ["train"] * (n * 6 // 10) + ["val"] * (n * 2 // 10)
    splits += ["test"] * (n - len(splits))
    splits = [splits[i] for i in rng.permutation(n)]
    if bad:
        visual[5, 3] = np.nan
        labels[7] = ""
        ids[9] = ids[8]
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"visual": visual, "audio": audio, "text": text}
    if fmt == "npy":
        for m, a in arrays.items():
            np.save(root / f"{m}.npy", a)
    else:
        import h5py

        with h5py.File(root / "features.h5", "w") as f:
            for m, a in arrays.items():
                f.create_dataset(m, data=a)
    with (root / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "split"])
        w.writerows(zip(ids, labels, splits))
    return {"arrays": arrays, "ids": ids, "n": n}


MODALITIES = {"visual": "vector", "audio": "sequence", "text": "tokens"}


def features_config(root: Path, **extra) -> dict:
    cfg = tiny_config(datasets=["features"], backbones=["mlp"])
    cfg["datasets"]["features"] = {
        "source": {"path": str(root), "max_missing_fraction": 0.1},
        "modalities": dict(MODALITIES),
        "preprocess": {"max_rejected_fraction": 0.1, **extra},
    }
    cfg["backbones"].update(mlp={"hidden": 16}, sequence={"dim": 16, "layers": 1}, text={"dim": 16, "layers": 1})
    return cfg


def cache_of(tmp_path: Path, cfg: dict, tag: str = "c") -> tuple[dict, Path]:
    cfg = load_config(base=None, sets=[]) if cfg is None else cfg
    from benchmark.config import validate_config

    cfg = validate_config(cfg)
    ds = dataset_instance(cfg, "features")
    raw, out = tmp_path / f"raw-{tag}", tmp_path / f"cache-{tag}"
    ds.download(raw)
    info = preprocess(ds, raw, out, ds.settings["preprocess"], log=lambda *_: None)
    return info, out


def test_kinds_check_shape_dtype_values_and_token_range():
    vec = get_kind("vector")
    t, repaired = vec.check(np.ones(4, dtype=np.float64), {"shape": [4]})
    assert t.dtype == torch.float32 and repaired == 0
    with pytest.raises(MediaError, match="wrong shape"):
        vec.check(np.ones(5, dtype=np.float32), {"shape": [4]})
    with pytest.raises(MediaError, match="wrong dtype"):
        vec.check(np.ones(4, dtype=np.int64), {"shape": [4]})
    with pytest.raises(MediaError, match="non-finite"):
        vec.check(np.array([1, np.inf, 0, np.nan], dtype=np.float32), {"shape": [4]})
    fixed, n = vec.check(np.array([1, np.inf, 0, np.nan], dtype=np.float32), {"shape": [4]}, nonfinite="zero")
    assert n == 2 and fixed.tolist() == [1, 0, 0, 0]
    tok = get_kind("tokens")
    assert tok.check(np.array([3, 0, 0]), {"shape": [3], "vocab_size": 4})[0].dtype == torch.int64
    with pytest.raises(MediaError, match="token id out of range"):
        tok.check(np.array([4, 0, 0]), {"shape": [3], "vocab_size": 4})
    with pytest.raises(MediaError, match="wrong dtype"):
        tok.check(np.array([0.5, 0, 0]), {"shape": [3], "vocab_size": 4})


@pytest.mark.parametrize("fmt", ["npy", "hdf5"])
def test_features_are_cached_with_their_kinds_and_bad_rows_have_reasons(tmp_path, fmt):
    tree = write_feature_tree(tmp_path / "feat", fmt=fmt)
    info, out = cache_of(tmp_path, features_config(tmp_path / "feat"))
    mods = info["modalities"]
    assert mods["visual"] == {"kind": "vector", "shape": [10], "dtype": "float32"}
    assert mods["audio"]["kind"] == "sequence" and mods["audio"]["shape"] == [6, 5]
    assert mods["text"] == {"kind": "tokens", "vocab_size": 12, "shape": [7], "dtype": "int64"}
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False)
    reasons = dict(zip(rejected["stage"] + ":" + rejected["reason"], rejected["detail"]))
    assert set(reasons) == {"listing:no label", "listing:duplicate id", "decode:non-finite values"}
    assert reasons["decode:non-finite values"].startswith("visual: 1 NaN/inf")
    data = CachedSplit(out)
    assert len(data) == tree["n"] - 3 and "s005" not in data.clip_ids
    i = data.clip_ids.index("s010")
    assert torch.equal(data.shards[0]["text"][i], torch.from_numpy(tree["arrays"]["text"][10]))
    assert torch.equal(data.shards[0]["audio"][i], torch.from_numpy(tree["arrays"]["audio"][10]))


def test_nonfinite_zero_repairs_and_lists_the_clip(tmp_path):
    write_feature_tree(tmp_path / "feat")
    info, out = cache_of(tmp_path, features_config(tmp_path / "feat", nonfinite="zero"))
    assert info["repaired"] == 1
    assert (out / "repaired.csv").read_text().splitlines()[1] == "s005,visual,1"
    data = CachedSplit(out)
    assert data.shards[0]["visual"][data.clip_ids.index("s005"), 3] == 0


def test_a_sample_the_dataset_cannot_hand_over_is_rejected_not_fatal(tmp_path, monkeypatch):
    from benchmark.data.features import Features

    write_feature_tree(tmp_path / "feat", bad=False)
    original = Features.tensors

    def flaky(self, raw_dir, row):
        out = original(self, raw_dir, row)
        if row["clip_id"] == "s004":
            out.pop("audio")
        if row["clip_id"] == "s006":
            out["visual"] = out["visual"][:4]
        return out

    monkeypatch.setattr(Features, "tensors", flaky)
    _, out = cache_of(tmp_path, features_config(tmp_path / "feat"))
    rejected = pd.read_csv(out / "rejected.csv", keep_default_na=False).set_index("clip_id")
    assert rejected.loc["s004", "reason"] == "missing modality" and "'audio'" in rejected.loc["s004", "detail"]
    assert rejected.loc["s006", "reason"] == "wrong shape" and rejected.loc["s006", "detail"].startswith("visual: (4,)")


def test_tokens_stay_ids_on_the_device_and_their_absent_input_is_padding(tmp_path):
    from benchmark.config import component_class, validate_config
    from benchmark.models.model import build_model

    write_feature_tree(tmp_path / "feat", bad=False)
    cfg = validate_config(features_config(tmp_path / "feat"))
    info, out = cache_of(tmp_path, cfg)
    data = CachedSplit(out)
    prep = BatchPreparer(info["modalities"], {"mean": [0.5] * 3, "std": [0.25] * 3}, torch.device("cpu"))
    inputs, _ = prep(data.__getitems__(list(range(8))))
    assert inputs["text"].dtype == torch.int64 and inputs["visual"].dtype == torch.float32
    mlp = component_class(cfg, "backbones", "mlp")
    model = build_model(
        modality_info=info["modalities"],
        num_classes=3,
        backbone_cls=mlp,
        backbone_params={"hidden": 8},
        fusion_cls=component_class(cfg, "fusions", "concat"),
        fusion_params={},
        unimodal_heads=False,
        seed=0,
        encoders={
            "audio": (component_class(cfg, "backbones", "sequence"), {"dim": 8, "layers": 1, "heads": 2}),
            "text": (component_class(cfg, "backbones", "text"), {"dim": 8, "layers": 1, "heads": 2}),
        },
    )
    assert model.encoders["text"].embedding.num_embeddings == 12  # vocab_size from the cache's spec
    model.absent.fit([inputs])
    absent = model.without(inputs, keep=[])
    assert absent["text"].dtype == torch.int64 and not absent["text"].any()  # all padding, not a mean of ids
    assert torch.allclose(absent["visual"][0], inputs["visual"].mean(0))
    assert torch.isfinite(model(absent).logits).all()


def test_each_modality_gets_an_encoder_that_takes_it_and_the_run_records_it(tmp_path):
    write_feature_tree(tmp_path / "feat", bad=False)
    cfg = load_config_from(features_config(tmp_path / "feat"))
    settings = Resolver(cfg).run(RunSpec("features", "mlp", "concat", "joint", 0)).settings
    assert {m: e["name"] for m, e in settings["backbone"]["encoders"].items()} == {"audio": "sequence", "text": "text"}
    assert settings["backbone"]["encoders"]["text"]["params"]["dim"] == 16
    plain = Resolver(load_config_from(default_config())).run(RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0))
    assert "encoders" not in plain.settings["backbone"]  # runs whose backbone takes every modality keep their identity
    cfg2 = features_config(tmp_path / "feat")
    cfg2["input_kinds"] = {"sequence": {"encoder": "mlp"}}  # no: mlp takes vectors only
    with pytest.raises(ValueError, match="does not take"):
        resolver = Resolver(load_config_from(cfg2))
        from benchmark.run import build_run_model

        s = resolver.run(RunSpec("features", "mlp", "concat", "joint", 0)).settings
        build_run_model(load_config_from(cfg2), s, {"classes": CLASSES, "modalities": fake_info()}, joint_cls())


def fake_info() -> dict:
    return {
        "visual": {"kind": "vector", "shape": [10]},
        "audio": {"kind": "sequence", "shape": [6, 5]},
        "text": {"kind": "tokens", "shape": [7], "vocab_size": 12},
    }


def joint_cls():
    from benchmark.balancers import BALANCERS

    return BALANCERS.get("joint")


def load_config_from(cfg: dict) -> dict:
    from benchmark.config import validate_config

    return validate_config(cfg)


def test_grid_names_why_a_backbone_or_ogm_cannot_run_on_tensor_modalities(tmp_path):
    write_feature_tree(tmp_path / "feat", bad=False)
    cfg = features_config(tmp_path / "feat")
    cfg["grid"].update(backbones=["mlp", "small_cnn"], balancers=["joint", "ogm_ge"])
    runs, skipped = grid_runs(load_config_from(cfg))
    assert {(s.backbone, s.method) for s in runs} == {("mlp", "joint")}
    reasons = {(s.backbone, s.method): r for s, r in skipped}
    assert "takes none of dataset 'features''s modalities" in reasons[("small_cnn", "joint")]
    assert "no convolution weights" in reasons[("mlp", "ogm_ge")] and "modulate: declared" in reasons[("mlp", "ogm_ge")]
    cfg["balancers"]["ogm_ge"]["modulate"] = "declared"
    runs, _ = grid_runs(load_config_from(cfg))
    assert ("mlp", "ogm_ge") in {(s.backbone, s.method) for s in runs}


def test_ogm_declared_scales_the_declared_weight_matrices_only():
    from benchmark.balancers import BALANCERS
    from benchmark.balancers.base import RunContext
    from benchmark.models.encoders import MLPEncoder
    from benchmark.models.fusions import FUSIONS
    from benchmark.models.model import MultimodalModel

    torch.manual_seed(0)
    encoders = {m: MLPEncoder("vector", (4,), hidden=3, layers=1, input_norm=False) for m in ("a", "b")}
    model = MultimodalModel(encoders, FUSIONS.get("concat")({"a": 3, "b": 3}, 2), 2)
    ogm = BALANCERS.get("ogm")(alpha=0.5, modulate="declared")
    ogm.setup(model, RunContext(modalities=["a", "b"], num_epochs=10, device=torch.device("cpu")))
    x = {"a": torch.randn(6, 4), "b": torch.randn(6, 4)}
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    out = model(x)
    ogm.loss(out, y).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    ogm.ctx.epoch = 0
    ogm.after_backward(out, y)
    for m in ("a", "b"):
        k = float(ogm.k[m])
        for n, p in model.encoders[m].named_parameters():
            expected = before[f"encoders.{m}.{n}"] * (k if p.dim() >= 2 else 1.0)  # weights scaled, biases not
            assert torch.allclose(p.grad, expected), n
    assert any("modulate: declared" in note for note in ogm.run_notes)


def test_tuning_searches_the_encoder_a_modality_gets_instead_of_the_backbone(tmp_path):
    from benchmark.search import apply_params, group_space, trial_params

    write_feature_tree(tmp_path / "feat", bad=False)
    cfg = features_config(tmp_path / "feat")
    cfg["tuning"].update(enabled=True, strategy="grid", trials=4)
    cfg["tuning"]["space"] = {
        "train": {"optimizer.lr": {"choices": [0.01, 0.1]}},
        "backbones": {"text": {"dim": {"choices": [8, 16]}}},
    }
    cfg = load_config_from(cfg)
    spec = RunSpec("features", "mlp", "concat", "joint", 0)
    assert set(group_space(cfg, spec)) == {"train.optimizer.lr", "encoder.text.dim"}
    dims = {trial_params(cfg, spec, k)["encoder.text.dim"] for k in range(4)}
    assert dims == {8, 16}
    settings = Resolver(cfg).run(spec).settings
    tuned = apply_params(settings, {"encoder.text.dim": 8})
    assert tuned["backbone"]["encoders"]["text"]["params"]["dim"] == 8
    bad = features_config(tmp_path / "feat")
    bad["tuning"].update(enabled=True, strategy="grid", trials=2)
    bad["tuning"]["space"] = cfg["tuning"]["space"]
    with pytest.raises(ConfigError, match="joint on features/mlp/concat has 4, not 2"):
        load_config_from(bad)


def test_a_user_dataset_entry_is_validated_and_unknown_kinds_name_the_key(tmp_path):
    cfg = tiny_config(datasets=["sensors"], backbones=["signal_cnn"])
    cfg["datasets"]["sensors"] = {"class": "examples.my_dataset:SensorViews", "modalities": {"accel": "wiggle"}}
    cfg["backbones"]["signal_cnn"] = {"class": "examples.my_dataset:SignalCNN"}
    with pytest.raises(ConfigError) as err:
        load_config_from(cfg)
    assert err.value.key == "datasets.sensors.modalities.accel" and "input kind" in err.value.message
    cfg["datasets"]["sensors"]["modalities"] = {"accel": "signal", "summary": "vector"}
    cfg["input_kinds"] = {"signal": {"class": "examples.my_dataset:Signal", "encoder": "nope"}}
    with pytest.raises(ConfigError) as err:
        load_config_from(cfg)
    assert err.value.key == "input_kinds.signal.encoder"
    cfg["input_kinds"]["signal"]["encoder"] = "signal_cnn"
    settings = dataset_settings_of(cfg, "sensors")
    assert settings["kinds"] == {"signal": "examples.my_dataset:Signal"} and "code_sha256" not in settings


def dataset_settings_of(cfg: dict, name: str) -> dict:
    from benchmark.config import dataset_settings

    return dataset_settings(load_config_from(cfg), name)


def test_track_code_makes_an_edit_of_the_user_module_a_new_identity(tmp_path, monkeypatch):
    module = tmp_path / "views_mod.py"
    shutil.copy(REPO / "examples/my_dataset.py", module)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny_config(datasets=["sensors"], backbones=["signal_cnn"])
    cfg["datasets"]["sensors"] = {"class": "views_mod:SensorViews", "track_code": True}
    cfg["backbones"]["signal_cnn"] = {"class": "views_mod:SignalCNN"}
    cfg["input_kinds"] = {"signal": {"class": "views_mod:Signal", "encoder": "signal_cnn"}}
    spec = RunSpec("sensors", "signal_cnn", "concat", "joint", 0)

    def identities(c):
        resolver = Resolver(load_config_from(c))
        return resolver.run(spec).identity, resolver.dataset_dirs("sensors").processed

    before = identities(cfg)
    module.write_text(module.read_text() + "\n# a changed comment is a changed file\n")
    after = identities(cfg)
    assert before[0] != after[0] and before[1] != after[1]  # the cache and the run both change
    cfg["datasets"]["sensors"]["track_code"] = False
    untracked = identities(cfg)
    module.write_text(module.read_text() + "\n# again\n")
    assert identities(cfg) == untracked
    cfg["fusions"]["concat"] = {"track_code": True}
    with pytest.raises(ConfigError) as err:
        load_config_from(cfg) and identities(cfg)
    assert err.value.key == "fusions.concat.track_code"


@pytest.mark.slow
def test_a_user_tensor_dataset_with_its_own_kind_and_encoder_through_the_dag(tmp_path):
    from tests.test_workflow import run_path, snakemake

    shutil.copy(REPO / "examples/my_dataset.py", tmp_path / "my_dataset.py")
    cfg = tiny_config(datasets=["sensors"], backbones=["signal_cnn"], balancers=["joint", "ogm_ge", "mlb", "gblend"])
    cfg["train"]["epochs"] = 6
    cfg["train"]["optimizer"]["lr"] = 0.05
    cfg["input_kinds"] = {"signal": {"class": "my_dataset:Signal", "encoder": "signal_cnn"}}
    cfg["backbones"].update(signal_cnn={"class": "my_dataset:SignalCNN", "channels": 8}, mlp={"hidden": 16})
    cfg["datasets"] = {"sensors": {"class": "my_dataset:SensorViews", "track_code": True}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "s.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv", keep_default_na=False)
    status = dict(zip(board["method"], board["status"]))
    assert status == {"joint": "ok", "mlb": "ok", "gblend": "ok", "ogm_ge": "n/a"}
    md = (tmp_path / "results/default/leaderboard.md").read_text()
    assert "no convolution weights" in md and "(the encoder of modality 'summary')" in md
    m = json.loads(
        (
            run_path(tmp_path, tmp_path / "s.yaml", "joint", dataset="sensors", backbone="signal_cnn") / "metrics.json"
        ).read_text()
    )
    assert m["settings"]["backbone"]["encoders"]["summary"]["name"] == "mlp"
    assert any("'summary' is encoded by 'mlp'" in n for n in m["notes"])
    d = m["diagnostics"]
    assert set(d["linear_probe"]["test"]) == {"accel", "summary"}
    assert set(d["shapley"]["test"]["masked_accuracy"]) == {"none", "accel", "summary", "accel+summary"}
    assert m["metrics"]["best"]["test"]["accuracy"] > 0.6  # the signal is learnt (3 classes; 98% measured)
    again = snakemake(tmp_path, "-n", configfile=tmp_path / "s.yaml")
    assert "Nothing to be done" in again.stdout + again.stderr
    (tmp_path / "my_dataset.py").write_text((tmp_path / "my_dataset.py").read_text() + "\n# edited\n")
    changed = snakemake(tmp_path, "-n", configfile=tmp_path / "s.yaml")
    assert "preprocess" in changed.stdout and "train" in changed.stdout  # the edit re-runs what it affects


@pytest.mark.slow
def test_three_feature_modalities_through_the_dag_with_every_diagnostic(tmp_path):
    from tests.test_workflow import snakemake

    write_feature_tree(tmp_path / "feat")
    cfg = features_config(tmp_path / "feat")
    cfg["grid"]["balancers"] = ["joint", "ogm_ge", "mlb", "gblend"]
    cfg["balancers"]["ogm_ge"]["modulate"] = "declared"
    cfg["train"]["epochs"] = 4
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(cfg))
    res = snakemake(tmp_path, configfile=tmp_path / "f.yaml")
    assert res.returncode == 0, res.stderr[-3000:]
    board = pd.read_csv(tmp_path / "results/default/leaderboard.csv", keep_default_na=False)
    assert set(board["status"]) == {"ok"} and set(board["method"]) == {"joint", "ogm_ge", "mlb", "gblend"}
    for what in ("probe", "shapley", "masked_without"):  # the linear probes, Shapley values, missing-modality table
        assert {f"{what}_{m}_mean" for m in MODALITIES} <= set(board.columns)
        assert board[[f"{what}_{m}_mean" for m in MODALITIES]].notna().all().all()
    runs = list((tmp_path / "results/runs/features/main/mlp/concat/ogm_ge").glob("*/metrics.json"))
    m = json.loads(runs[0].read_text())
    assert any("modulate: declared" in n for n in m["notes"])
    assert set(m["diagnostics"]["linear_probe"]["test"]) == set(MODALITIES)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
