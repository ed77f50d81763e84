"""Every balancer × fusion the grid schedules trains one epoch on the built-in data with every backbone; every
combination it does not schedule has a reason."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.config import component_class, component_params, registry, validate_config
from benchmark.estimate import estimate_gblend
from benchmark.grid import grid_runs
from benchmark.run import execute_run, train_run
from tests.conftest import build_data, tiny_config

pytestmark = pytest.mark.slow
BACKBONES = ["small_cnn", "resnet18", "conformer", "r2plus1d_18"]


def micro_config(backbone: str) -> dict:
    cfg = tiny_config(
        backbones=[backbone], fusions=registry("fusions").names(), balancers=registry("balancers").names()
    )
    cfg["datasets"]["synthetic-av"]["generate"].update(num_clips=32, size=16)
    cfg["datasets"]["synthetic-av"]["preprocess"]["visual"].update(size=8)
    cfg["datasets"]["synthetic-av"]["preprocess"]["audio"].update(n_mels=16, hop_length=4000)
    cfg["backbones"]["conformer"] = {"dim": 16, "layers": 1, "heads": 2, "ffn_dim": 32, "frame_width": 4}
    cfg["balancers"]["gblend"]["estimate_epochs"] = 1
    cfg["balancers"]["gblend_online"] = {"first_super_epoch": 1, "super_epoch": 1, "min_holdout": 4}
    cfg["balancers"]["gblend"] = {**cfg["balancers"]["gblend"], "min_holdout": 4}
    return validate_config(cfg)


@pytest.fixture(scope="module")
def micro_workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    build_data(root, micro_config("small_cnn"))
    return root


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_scheduled_combination_trains_and_every_other_has_a_reason(micro_workspace, backbone, monkeypatch):
    monkeypatch.chdir(micro_workspace)
    cfg = micro_config(backbone)
    runs, skipped = grid_runs(cfg)
    quiet = lambda s: None  # noqa: E731
    # what the DAG produces before the runs that need it: unimodal checkpoints, G-Blend weights
    for spec in runs:
        if component_class(cfg, "balancers", spec.balancer).per_modality:
            train_run(cfg, spec, log=quiet)
    for fusion in {s.fusion for s in runs if s.balancer == "gblend"}:  # where the DAG schedules an estimate
        estimate_gblend(cfg, "synthetic-av", backbone, fusion, 0, log=quiet)
    trained = set()
    for spec in runs:
        if component_class(cfg, "balancers", spec.balancer).per_modality:
            continue
        metrics, state = execute_run(cfg, spec, log=quiet)
        assert metrics["status"] == "ok", spec
        assert all(math.isfinite(v) for v in metrics["metrics"]["best"]["test"].values()), spec
        assert all(torch.isfinite(t.float()).all() for t in state.values()), spec
        trained.add((spec.balancer, spec.fusion))
    balancers = set(registry("balancers").names()) - {"unimodal"}
    fusions = set(registry("fusions").names())
    not_scheduled = {(s.balancer, s.fusion): reason for s, reason in skipped}
    assert trained | set(not_scheduled) == {(b, f) for b in balancers for f in fusions}
    assert all(reason.strip() for reason in not_scheduled.values())
    mixing = {f for f in fusions if not component_class(cfg, "fusions", f).modality_logits_exact}
    expected = {("mmcosine", f) for f in mixing}
    merged = {f for f in fusions if not component_class(cfg, "fusions", f).per_modality_features}  # mid_concat
    expected |= {
        (b, f) for b in balancers for f in merged if component_class(cfg, "balancers", b).needs_modality_features
    }
    expected |= {  # what a method itself declares it cannot run (e.g. CGGM on fusions that mix before the head)
        (b, f)
        for b in balancers
        for f in fusions
        if component_class(cfg, "balancers", b).unsupported(component_class(cfg, "fusions", f), 2)
    }
    backbone_cls = component_class(cfg, "backbones", backbone)
    expected |= {  # what a method declares it cannot run on this backbone (e.g. greedy needs encoder blocks)
        (b, f)
        for b in balancers
        for f in fusions
        if component_class(cfg, "balancers", b).backbone_unsupported(
            backbone_cls, component_params(cfg, "balancers", b, dataset="synthetic-av", backbone=backbone)
        )
    }
    if not backbone_cls.has_blocks():  # fusions between blocks need blocks
        expected |= {(b, f) for b in balancers for f in fusions if component_class(cfg, "fusions", f).needs_blocks}
    assert set(not_scheduled) == expected
