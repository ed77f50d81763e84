"""Training runs end to end on the tiny dataset: determinism, validation-only selection, G-Blend estimation."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import benchmark.run as run_module
from benchmark.config import validate_config
from benchmark.data.cache import load_part
from benchmark.estimate import estimate_gblend
from benchmark.grid import RunSpec
from benchmark.run import train_run
from benchmark.settings import Resolver, Step
from tests.conftest import tiny_data_dirs


@pytest.fixture
def tiny_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 3
    return validate_config(cfg)


def quiet(_: str) -> None:
    pass


def test_same_seed_gives_identical_metrics_on_cpu(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 0)
    a = train_run(tiny_cfg, spec, tmp_path / "a", log=quiet)
    b = train_run(tiny_cfg, spec, tmp_path / "b", log=quiet)
    a.pop("timing"), b.pop("timing")
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
    c = train_run(tiny_cfg, RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 1), tmp_path / "c", log=quiet)
    assert c["history"] != a["history"]


def test_determinism_sets_the_deterministic_flag_without_importing_the_compiler():
    # A fresh interpreter: the flag must be torch's own (what use_deterministic_algorithms sets, warn-only), and
    # the start-up of each job must not pay for importing torch._inductor.
    import subprocess
    import sys

    code = (
        "import sys, torch; from benchmark.train import configure_determinism; configure_determinism(True); "
        "print(torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(), "
        "'torch._inductor.config' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True", "False"]


def test_determinism_skips_the_nan_fill_and_the_throughput_profile_turns_autotuning_on():
    from benchmark.config import ConfigError, load_config
    from benchmark.train import configure_determinism

    try:
        configure_determinism(True)  # deterministic kernels, without filling every new tensor with NaN
        assert torch.are_deterministic_algorithms_enabled() and not torch.utils.deterministic.fill_uninitialized_memory
        assert not torch.backends.cudnn.benchmark
        configure_determinism(False, cudnn_benchmark=True)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        configure_determinism(True, cudnn_benchmark=True)  # determinism wins
        assert not torch.backends.cudnn.benchmark
    finally:
        configure_determinism(True)
    with pytest.raises(ConfigError, match="'train.cudnn_benchmark': needs train.deterministic: false"):
        load_config([], ["train.cudnn_benchmark=true"])
    cfg = load_config(["configs/throughput.yaml"], [])
    assert cfg["train"]["cudnn_benchmark"] and not cfg["train"]["deterministic"]


def test_loader_workers_change_no_number_and_no_identity(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 0)
    a = train_run(tiny_cfg, spec, tmp_path / "a", log=quiet)
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["resources"]["train"]["loader_workers"] = 2
    b = train_run(validate_config(cfg), spec, tmp_path / "b", log=quiet)
    assert b["identity"] == a["identity"] and b["config_hash"] == a["config_hash"]
    assert json.dumps(b["history"]) == json.dumps(a["history"]) and b["metrics"] == a["metrics"]


def test_metrics_file_contents_and_validation_selection(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "mlb", 0)
    m = train_run(tiny_cfg, spec, tmp_path, log=quiet)
    assert json.loads((tmp_path / "metrics.json").read_text())["config_hash"] == m["config_hash"]
    assert (tmp_path / "model.pt").exists()
    assert m["status"] == "ok" and len(m["history"]) == 3
    assert m["provenance"]["git_commit"] and m["provenance"]["device"].startswith("cpu")
    assert m["settings"] == Resolver(tiny_cfg).run(spec).settings
    assert m["identity"]["identity"] == Resolver(tiny_cfg).run(spec).identity
    val_acc = [h["val_accuracy"] for h in m["history"]]
    best = m["selection"]["best_epoch"]
    assert best == val_acc.index(max(val_acc))  # earliest epoch with the best validation accuracy
    assert m["metrics"]["best"]["val"]["accuracy"] == pytest.approx(val_acc[best])
    assert m["metrics"]["last"]["val"]["accuracy"] == pytest.approx(val_acc[-1])
    for key in ("k_audio", "k_visual", "r_audio", "loss_uni_visual", "val_acc_head_audio", "val_acc_visual"):
        assert key in m["history"][0], key
    for part in ("best", "last"):
        assert set(m["metrics"][part]["test"]) >= {"accuracy", "macro_f1", "acc_audio", "acc_visual"}


def test_test_split_is_not_read_during_training(tiny_cfg, tmp_path, monkeypatch):
    import benchmark.data.splits as splits

    parts_read = []
    real_read = splits.read_split

    def spy(processed_dir, fold, part, *rest):
        parts_read.append(part)
        return real_read(processed_dir, fold, part, *rest)

    real_fit = run_module.fit

    def checked_fit(*args, **kwargs):
        assert "test" not in parts_read, "test split read before training"
        result = real_fit(*args, **kwargs)
        assert "test" not in parts_read, "test split read during training"
        return result

    monkeypatch.setattr(splits, "read_split", spy)
    monkeypatch.setattr(run_module, "fit", checked_fit)
    tiny_cfg["evaluation"]["test_selection_audit"] = False
    train_run(tiny_cfg, RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0), tmp_path, log=quiet)
    assert parts_read == ["train", "val", "test"]  # test read once, after selection, for reporting


def test_test_selection_audit_is_reported_and_changes_nothing_else(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 0)
    audited = train_run(tiny_cfg, spec, tmp_path / "a", log=quiet)
    tiny_cfg["evaluation"]["test_selection_audit"] = False
    plain = train_run(tiny_cfg, spec, tmp_path / "b", log=quiet)
    audit = audited["diagnostics"].pop("audit")
    assert "audit" not in plain["diagnostics"]
    for key in ("history", "metrics", "diagnostics", "selection"):
        assert json.dumps(audited[key], sort_keys=True) == json.dumps(plain[key], sort_keys=True), key
    per_epoch = audit["test_accuracy_per_epoch"]
    assert len(per_epoch) == 3
    assert per_epoch[audited["selection"]["best_epoch"]] == pytest.approx(
        audited["metrics"]["best"]["test"]["accuracy"]
    )
    assert per_epoch[-1] == pytest.approx(audited["metrics"]["last"]["test"]["accuracy"])
    top = audit["test_selected"]
    assert top["accuracy"] == max(per_epoch) and top["epoch"] == per_epoch.index(max(per_epoch))


def test_unimodal_run_uses_one_modality(tiny_cfg, tmp_path):
    m = train_run(tiny_cfg, RunSpec("synthetic-av", "small_cnn", "none", "unimodal", 0, "visual"), tmp_path, log=quiet)
    assert m["run"]["modalities"] == ["visual"] and m["run"]["method"] == "unimodal-visual"
    assert "acc_audio" not in m["metrics"]["best"]["test"]


def test_gblend_estimate_uses_a_held_out_part_of_train_and_feeds_training(tiny_cfg, tmp_path):
    out = tmp_path / "w.json"
    est = estimate_gblend(tiny_cfg, "synthetic-av", "small_cnn", "concat", 0, out, log=quiet)
    assert set(est["weights"]) == {"audio", "visual", "fused"}
    assert sum(est["weights"].values()) == pytest.approx(1.0)
    train_ids = set(load_part(tiny_data_dirs().processed, "main", "train", splits_dir=tiny_data_dirs().splits).ids())
    held, subset = set(est["holdout_clip_ids"]), set(est["train_subset_clip_ids"])
    assert held and held <= train_ids and subset <= train_ids and held.isdisjoint(subset)
    for split in ("val", "test"):
        assert held.isdisjoint(
            load_part(tiny_data_dirs().processed, "main", split, splits_dir=tiny_data_dirs().splits).ids()
        )
    for head in est["heads"].values():  # G and O follow from the measured losses (Alg. 1)
        b, a = head["before"], head["after"]
        assert head["G"] == pytest.approx(b["V"] - a["V"])
        assert head["O"] == pytest.approx((a["V"] - a["T'"]) - (b["V"] - b["T'"]))
    dst = Resolver(tiny_cfg).resolve(Step("estimate", RunSpec("synthetic-av", "small_cnn", "concat", "gblend", 0))).path
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(out.read_text())
    m = train_run(tiny_cfg, RunSpec("synthetic-av", "small_cnn", "concat", "gblend", 0), tmp_path / "run", log=quiet)
    assert m["status"] == "ok"
    torch.testing.assert_close(torch.tensor(sum(est["weights"].values())), torch.tensor(1.0))


def test_bf16_and_channels_last_train_on_cpu_and_are_recorded_only_when_on(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 0)
    assert (
        "precision" not in Resolver(tiny_cfg).run(spec).settings["train"]
    )  # off: left out, so existing runs keep their hash
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"].update(precision="bf16", channels_last=True)
    m = train_run(validate_config(cfg), spec, tmp_path, log=quiet)
    assert (
        m["status"] == "ok"
        and m["settings"]["train"]["precision"] == "bf16"
        and m["settings"]["train"]["channels_last"] is True
    )
    assert m["config_hash"] != train_run(tiny_cfg, spec, tmp_path / "fp32", log=quiet)["config_hash"]
    assert all(h["train_loss"] == h["train_loss"] for h in m["history"])  # finite


@pytest.mark.slow
def test_compiled_encoders_train_and_are_recorded(tiny_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "ogm_ge", 0)
    cfg = json.loads(json.dumps(tiny_cfg))
    cfg["train"].update(compile=True, epochs=1)
    m = train_run(validate_config(cfg), spec, tmp_path / "compiled", log=quiet)
    cfg["train"]["compile"] = False
    eager = train_run(validate_config(cfg), spec, tmp_path / "eager", log=quiet)
    assert m["status"] == "ok" and m["settings"]["train"]["compile"] is True
    assert "compile" not in eager["settings"]["train"]
    assert m["config_hash"] != eager["config_hash"]
    # the same computation, compiled: the same numbers up to float reordering
    assert m["history"][0]["train_loss"] == pytest.approx(eager["history"][0]["train_loss"], rel=1e-4)


def test_jobs_on_one_machine_claim_different_gpus_and_a_slurm_job_its_own(tmp_path, monkeypatch):
    import subprocess
    import sys

    from benchmark import devices

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    devices.release_gpus()
    # another job holds GPU 0 (a second process, as Snakemake starts them)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from benchmark import devices; print(devices.claim_gpu(3, {str(tmp_path)!r}), "
            "flush=True); import time; time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "0"
        assert devices.claim_gpu(3, tmp_path) == 1
        assert devices.claim_gpu(3, tmp_path) == 1  # this process keeps its claim
        devices.release_gpus()
        monkeypatch.setenv("SLURM_JOB_ID", "42")
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,6")
        assert devices.claim_gpu(2, tmp_path) == 0  # the allocation's first GPU, whatever its number on the node
    finally:
        holder.kill()
        holder.wait()
        devices.release_gpus()
    monkeypatch.delenv("SLURM_JOB_ID")
    assert devices.claim_gpu(3, tmp_path) == 0  # the holder is gone: the kernel dropped its lock
    devices.release_gpus()
