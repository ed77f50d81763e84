"""Sample-level modality valuation (benchmark/balancers/valuation.py): the released value function and bands, the
Shapley extension to three modalities, the copies' gradients, and the method in the harness (one epoch, resume)."""

from __future__ import annotations

import itertools

import pytest
import torch
import yaml
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.valuation import SampleValuation, resample_copies, shapley_contributions
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import ConcatFusion
from benchmark.run import execute_run
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces


def test_two_modalities_reproduce_the_released_contribution_for_every_outcome():
    for a, v, fused in itertools.product([False, True], repeat=3):
        correct = {frozenset({"a"}): torch.tensor([a]), frozenset({"v"}): torch.tensor([v])}
        correct[frozenset({"a", "v"})] = torch.tensor([fused])
        phi = shapley_contributions(["a", "v"], correct)
        value_all = 2.0 if fused else 0.0
        assert phi["a"].item() == pytest.approx((float(a) + value_all - float(v)) / 2)
        assert phi["v"].item() == pytest.approx((float(v) + value_all - float(a)) / 2)


def test_the_released_bands_give_one_two_three_or_no_copies():
    phi = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5, 0.4, -0.1])
    assert resample_copies(phi).tolist() == [3, 2, 1, 0, 0, 0, 0]  # the bands are open at both ends


def test_three_modalities_take_the_exact_shapley_value():
    mods = ["a", "b", "c"]
    # right exactly when 'a' is in the coalition: v(S) = |S| if a in S else 0
    correct = {frozenset(s): torch.tensor(["a" in s]) for k in (1, 2, 3) for s in itertools.combinations(mods, k)}
    phi = shapley_contributions(mods, correct)
    # a's marginal values 1 (to {}), 2 (to {b}), 2 (to {c}), 3 (to {b,c}), weights 1/3, 1/6, 1/6, 1/3
    assert phi["a"].item() == pytest.approx(2.0)
    assert phi["b"].item() == pytest.approx(0.5) and phi["c"].item() == pytest.approx(0.5)  # 1/6·1 + 1/3·1
    assert sum(p.item() for p in phi.values()) == pytest.approx(3.0)  # efficiency: v(all)


def make(warmup=0):
    model = small_model("concat")
    method = SampleValuation(warmup=warmup)
    ctx = RunContext(modalities=model.modalities, num_epochs=4, device=torch.device("cpu"))
    method.setup(model, ctx)
    return model, method, ctx


def test_a_copy_keeps_only_its_modality_so_the_other_encoder_learns_nothing_from_it():
    model, method, ctx = make()
    inputs, y = small_batch(2)
    method._tags = torch.tensor([-1, 0, 1])  # draw 0: both modalities; draw 1: audio only; draw 2: visual only
    ctx.draws = torch.tensor([0, 1])  # sample 0 whole, sample 1 as an audio-only copy
    model.zero_grad()
    method.loss(method.forward(model, inputs), y).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    f = model.encode(inputs)
    whole = model.fusion({m: x[:1] for m, x in f.items()})
    audio_only = model.fusion({"audio": f["audio"][1:], "visual": torch.zeros_like(f["visual"][1:])})
    ((F.cross_entropy(whole, y[:1]) + F.cross_entropy(audio_only, y[1:])) / 2).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-6, atol=1e-8)

    model.zero_grad()  # the visual encoder's gradient is that of sample 0 alone
    f = model.encode(inputs)
    (F.cross_entropy(model.fusion({m: x[:1] for m, x in f.items()}), y[:1]) / 2).backward()
    for n, p in model.encoders["visual"].named_parameters():
        torch.testing.assert_close(got[f"encoders.visual.{n}"], p.grad, rtol=1e-6, atol=1e-8)


def test_the_epoch_draws_every_sample_once_plus_its_copies_tagged_by_modality():
    model, method, ctx = make(warmup=1)

    class Train:
        def __len__(self):
            return 3

    ctx.train = Train()
    assert method.epoch_rows(0) is None  # nothing valued yet: plain joint training
    method.copies = {"audio": torch.tensor([0, 2, 1]), "visual": torch.tensor([3, 0, 0])}
    assert method.epoch_rows(0) is None  # still warming up
    rows = method.epoch_rows(1)
    assert rows.tolist() == [0, 1, 2, 1, 1, 2, 0, 0, 0]
    assert method._tags.tolist() == [-1, -1, -1, 0, 0, 0, 1, 1, 1]


def test_contributions_score_every_training_sample_with_the_fused_head_on_zeroed_features():
    model, method, ctx = make()
    inputs, y = small_batch(6)
    ctx.batches = lambda: iter([(inputs, y)])
    phi = method.contributions()
    with torch.no_grad():
        f = model.encode(inputs)

        def right(kept: set) -> torch.Tensor:
            zeroed = {m: x if m in kept else torch.zeros_like(x) for m, x in f.items()}
            return model.fusion(zeroed).argmax(1).eq(y).float()

        expected = (right({"audio"}) + 2 * right({"audio", "visual"}) - right({"visual"})) / 2
    torch.testing.assert_close(phi["audio"], expected)
    assert isinstance(model.fusion, ConcatFusion) and model.training  # mode restored


@pytest.fixture
def valuation_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["valuation"] = {"warmup": 1}
    return cfg


def test_one_run_with_the_harness_values_and_resamples(valuation_cfg):
    valuation_cfg["train"]["epochs"] = 2
    cfg = validate_config(valuation_cfg)
    metrics, _ = execute_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "valuation", 0), log=quiet)
    assert metrics["status"] == "ok"
    first, second = metrics["history"]
    assert {"contribution_audio", "contribution_visual", "resampled_audio", "resampled_visual"} <= set(first)
    assert first["resampled_audio"] + first["resampled_visual"] > 0


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(valuation_cfg, tmp_path, monkeypatch):
    valuation_cfg["train"]["epochs"] = 4
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "valuation", 0)
    resume_reproduces(validate_config(valuation_cfg), spec, tmp_path, monkeypatch)
