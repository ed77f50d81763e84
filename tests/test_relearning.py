"""Diagnosing & Re-learning (Wei et al., ECCV 2024): purity, the re-initialisation strength and schedule on
hand-computed cases, the soft re-initialisation of the encoders' parameters by hand (optimizer state kept), the
held-out split, resume and a harness run."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import BALANCERS, RunContext
from benchmark.balancers.relearning import (
    ReLearning,
    cluster_purity,
    diagnosis_epochs,
    purity,
    reinit_strength,
    soft_reinit_,
)
from benchmark.config import component_class, validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.run import execute_run
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ["audio", "visual"]


# --- the rules ----------------------------------------------------------------------------------------------


def test_purity_hand_computed_and_ids_arbitrary():
    # clusters 5: labels {0, 0, 1} -> 2; 7: {1, 1} -> 2; 9: {2} -> 1: purity 5/6
    assert purity([0, 0, 1, 1, 1, 2], [5, 5, 5, 7, 7, 9]) == pytest.approx(5 / 6)
    assert purity([3, 3, 8, 8, 8, 1], [0, 0, 0, 4, 4, 2]) == pytest.approx(5 / 6)  # relabelled: the same
    assert purity([0, 1, 2, 3], [0, 0, 0, 0]) == pytest.approx(1 / 4)
    with pytest.raises(ValueError):
        purity([0, 1], [0])


def test_cluster_purity_separated_mixed_scaled_and_deterministic():
    x = torch.tensor([[0.0, 5.0], [0.1, 5.0], [0.9, 5.0], [1.0, 5.0]])
    # scaled to [−1, −0.8, 0.8, 1] (the constant feature to −1): 2 clusters {0, 1} and {2, 3}
    assert cluster_purity(x, torch.tensor([0, 0, 1, 1]), 2) == 1.0
    assert cluster_purity(x, torch.tensor([0, 1, 0, 1]), 2) == 0.5
    # min-max scaling per feature: a per-dimension positive affine map changes nothing
    assert cluster_purity(x * torch.tensor([100.0, 0.01]) + 7, torch.tensor([0, 1, 0, 1]), 2) == 0.5
    # identical points: one cluster in effect, purity = the largest class share
    assert cluster_purity(torch.zeros(5, 3), torch.tensor([0, 0, 0, 1, 2]), 3) == pytest.approx(3 / 5)
    g = torch.Generator().manual_seed(0)
    blobs = torch.randn(60, 4, generator=g) + 3 * torch.eye(4)[torch.arange(60) % 3]
    y = torch.arange(60) % 3
    assert cluster_purity(blobs, y, 3) == cluster_purity(blobs.clone(), y.clone(), 3)  # seeded, one thread


def test_reinit_strength_and_schedule_hand_computed():
    assert reinit_strength(0.9, 0.6, 3.0) == pytest.approx(math.tanh(0.9))  # tanh(λ·|P_D − P_V|)
    assert reinit_strength(0.6, 0.9, 3.0) == pytest.approx(math.tanh(0.9))
    assert reinit_strength(0.7, 0.7, 3.0) == 0.0
    assert diagnosis_epochs(20, 3, 90) == [20, 40, 60]  # released ours.sh: epoch % 20 == 0, epoch > 0, 3 times
    assert diagnosis_epochs(15, 2, 100) == [15, 30]  # BalanceBenchmark's trainer_config
    assert diagnosis_epochs("22%", 3, 16) == [4, 8, 12]  # round(0.22 · 16) = 4
    assert diagnosis_epochs(20, 3, 50) == [20, 40]  # within the schedule
    assert diagnosis_epochs(20, 3, 16) == []


def test_soft_reinit_mixes_in_place_keeping_the_parameter_objects():
    p = nn.Parameter(torch.tensor([2.0, -4.0]))
    before = p
    soft_reinit_([p], [torch.tensor([1.0, 0.0])], 0.25)
    torch.testing.assert_close(p.data, torch.tensor([0.75 * 2 + 0.25 * 1, 0.75 * -4 + 0.0]))
    assert p is before


# --- the method at parameter level --------------------------------------------------------------------------


class BatchesContext(RunContext):
    """A run context whose 'data' are lists of (inputs, labels) batches (no tensor cache needed)."""

    def batches(self, data=None, batch_size=None):
        return iter(self.train if data is None else data)


def linear_model() -> MultimodalModel:
    torch.manual_seed(0)
    encoders = {m: nn.Linear(2, 2) for m in MODALITIES}
    for e in encoders.values():
        e.out_dim = 2
    return MultimodalModel(encoders, ConcatFusion({m: 2 for m in MODALITIES}, 2), 2)


def test_diagnosis_and_soft_reinit_by_hand_optimizer_state_kept():
    """Encoders at the identity after 'training'. Audio separates its training clips (P_D = 1) but not its held-out
    ones (P_V = 1/2): α_a = tanh(3 · 1/2); visual separates both (gap 0): α_v = 0, unchanged. Every audio encoder
    parameter becomes (1 − α_a)·θ + α_a·θ⁰; the fusion head and the optimizer's momentum are untouched."""
    model = linear_model()
    relearning = ReLearning(every=1, times=1)
    separable = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.9, 0.0], [1.0, 0.0]])  # clusters {0, 1} / {2, 3}
    train = [({"audio": separable, "visual": separable}, torch.tensor([0, 0, 1, 1]))]
    # held out, labels [0, 1, 0, 1]: audio's clusters {0, 1} / {2, 3} each hold both labels (P_V = 1/2); visual's
    # rows are reordered so that its clusters {0, 2} / {1, 3} hold one label each (P_V = 1)
    held_visual = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.1, 0.0], [0.9, 0.0]])
    held = [({"audio": separable, "visual": held_visual}, torch.tensor([0, 1, 0, 1]))]
    ctx = BatchesContext(modalities=MODALITIES, num_epochs=3, device=torch.device("cpu"), train=train)
    relearning.setup(model, ctx)
    relearning.held_out = held
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():  # "trained" encoders: the identity map
        for m in MODALITIES:
            model.encoders[m].weight.copy_(torch.eye(2))
            model.encoders[m].bias.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)  # lr 0: a step only fills the momentum
    inputs, y = train[0]
    F.cross_entropy(model(inputs).logits, y).backward()
    optimizer.step()
    ctx.optimizer = optimizer
    momentum = {n: optimizer.state[p]["momentum_buffer"].clone() for n, p in model.named_parameters()}
    current = {n: p.detach().clone() for n, p in model.named_parameters()}

    relearning.on_epoch_end(0, {})  # not a diagnosis epoch (the schedule is [1])
    assert all(torch.equal(p, current[n]) for n, p in model.named_parameters())
    relearning.on_epoch_end(1, {})

    (diagnosis,) = relearning.diagnoses
    assert diagnosis["purity_train"] == {"audio": 1.0, "visual": 1.0}
    assert diagnosis["purity_held"] == {"audio": 0.5, "visual": 1.0}
    alpha = {"audio": math.tanh(1.5), "visual": 0.0}
    assert diagnosis["alpha"] == pytest.approx(alpha)
    for n, p in model.named_parameters():
        if n.startswith("encoders."):
            a = alpha[n.split(".")[1]]
            torch.testing.assert_close(p.detach(), (1 - a) * current[n] + a * initial[n])
        else:
            assert torch.equal(p, current[n]), n  # the fusion head is not re-initialised
        assert optimizer.state[p]["momentum_buffer"] is not None  # no forget_optimizer_state (released code)
        assert torch.equal(optimizer.state[p]["momentum_buffer"], momentum[n])
    assert not torch.equal(model.encoders["audio"].weight, current["encoders.audio.weight"])
    summary = relearning.epoch_summary()
    assert summary["alpha_audio"] == pytest.approx(math.tanh(1.5), rel=1e-6) and summary["gap_visual"] == 0.0
    # the state a checkpoint keeps: θ⁰ and the diagnoses (plain data), never the parameters themselves
    state = relearning.state_dict()
    torch.testing.assert_close(state["initial"]["audio"][0], initial["encoders.audio.weight"])
    assert state["diagnoses"][0]["alpha"]["audio"] == pytest.approx(math.tanh(1.5))
    assert "params" not in state  # (held_out is a split view in a run, rebuilt by training_split on resume)

    relearning.on_epoch_end(2, {})  # times=1: no further diagnosis
    assert len(relearning.diagnoses) == 1


def test_three_modalities_each_get_their_own_strength():
    torch.manual_seed(0)
    mods = ["a", "b", "c"]
    encoders = {m: nn.Linear(2, 2) for m in mods}
    for e in encoders.values():
        e.out_dim = 2
    model = MultimodalModel(encoders, ConcatFusion({m: 2 for m in mods}, 2), 2)
    sep, mixed = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.9, 0.0], [1.0, 0.0]]), torch.tensor([0, 1, 0, 1])
    train = [({m: sep for m in mods}, torch.tensor([0, 0, 1, 1]))]
    held = [({"a": sep, "b": sep[[0, 2, 1, 3]], "c": sep}, mixed)]  # a, c mixed (P_V = 1/2); b separable
    ctx = BatchesContext(modalities=mods, num_epochs=2, device=torch.device("cpu"), train=train)
    relearning = ReLearning(every=1, times=1, lam=1.0)
    relearning.setup(model, ctx)
    relearning.held_out = held
    with torch.no_grad():
        for m in mods:
            model.encoders[m].weight.copy_(torch.eye(2))
            model.encoders[m].bias.zero_()
    relearning.on_epoch_end(1, {})
    assert relearning.diagnoses[0]["alpha"] == pytest.approx({"a": math.tanh(0.5), "b": 0.0, "c": math.tanh(0.5)})
    torch.testing.assert_close(model.encoders["b"].weight.detach(), torch.eye(2))


def test_not_applicable_to_multi_label_and_merged_streams_and_params_checked():
    concat = component_class({}, "fusions", "concat")
    assert "single-label" in BALANCERS.get("relearning").not_applicable(concat, 2, multi_label=True)
    assert BALANCERS.get("relearning").not_applicable(concat, 3, multi_label=False) is None
    merged = component_class({}, "fusions", "mid_concat")
    assert "per-modality features" in BALANCERS.get("relearning").not_applicable(merged, 2, multi_label=False)
    with pytest.raises(ValueError):
        ReLearning(every="0%")
    with pytest.raises(ValueError):
        ReLearning(holdout_fraction=0.6)


# --- in the harness -----------------------------------------------------------------------------------------


@pytest.fixture
def relearning_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"]["relearning"] = {"lam": 3.0, "every": 1, "times": 2}  # diagnoses after epochs 2 and 3 (1-based)
    return validate_config(cfg)


def test_resuming_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(relearning_cfg, tmp_path, monkeypatch):
    """One re-initialisation before the kept checkpoint (after epoch index 1) and one after it (index 2)."""
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "relearning", 0)
    resume_reproduces(relearning_cfg, spec, tmp_path, monkeypatch)
    metrics = json.loads((tmp_path / "full/metrics.json").read_text())
    history = metrics["history"]
    assert [("alpha_audio" in row) for row in history] == [False, True, True, False]
    for row in history[1:3]:
        for m in MODALITIES:
            assert 0.0 <= row[f"alpha_{m}"] < 1.0
            assert row[f"alpha_{m}"] == pytest.approx(math.tanh(3.0 * row[f"gap_{m}"]), rel=1e-5)
    assert any("holds out V =" in note for note in metrics["notes"])


def test_one_epoch_in_the_harness_finishes_ok_with_the_holdout_left_out(relearning_cfg):
    cfg = copy.deepcopy(relearning_cfg)
    cfg["train"]["epochs"] = 1
    cfg["balancers"]["relearning"] = {}  # the released defaults: every 20 epochs, so none in one epoch
    metrics, _ = execute_run(
        validate_config(cfg), RunSpec("synthetic-av", "small_cnn", "concat", "relearning", 0), log=quiet
    )
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    assert "alpha_audio" not in metrics["history"][0]
    notes = " ".join(metrics["notes"])
    assert "never re-initialises in this schedule" in notes and "holds out V =" in notes
