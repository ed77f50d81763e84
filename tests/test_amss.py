"""AMSS / AMSS+ (Yang et al., TPAMI 2025) as the released code: the significance and update ratios by hand, the
sampling's distribution against ``torch.multinomial``, every gradient of a step against the plain cross-entropy's,
which parameters form a modality's sub-network, the generator's resumable state, and runs in the harness."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torchvision
import yaml
from torch.nn import functional as F

from benchmark.balancers.amss import (
    AMSS,
    feature_entropy,
    label_entropy,
    masked_parameters,
    residual_block_convolutions,
    sample_units,
    unit_mask,
    update_ratios,
)
from benchmark.balancers.base import RunContext
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.backbones import ResNet18, SmallCNN
from benchmark.models.encoders import MLPEncoder
from benchmark.models.fusions import ConcatFusion, FiLMFusion, SumFusion
from benchmark.models.model import MultimodalModel
from benchmark.run import execute_run
from tests.conftest import small_batch, small_model
from tests.test_pmr_mmcosine import Flat
from tests.test_resume import quiet, resume_reproduces

# --- the rules ---------------------------------------------------------------------------------------------------


def test_label_entropy_shannon_and_the_released_cross_entropy_of_the_frequencies():
    y = torch.tensor([0, 0, 1, 2])  # p = (1/2, 1/4, 1/4)
    shannon = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    assert label_entropy(y).item() == pytest.approx(shannon, rel=1e-6)
    lse = math.log(math.exp(0.5) + 2 * math.exp(0.25))
    released = -(0.5 * (0.5 - lse) + 2 * 0.25 * (0.25 - lse))  # −Σ p·log softmax(p)
    assert label_entropy(y, "released").item() == pytest.approx(released, rel=1e-6)
    assert released != pytest.approx(shannon, rel=1e-2)
    balanced = torch.tensor([0, 1, 2, 0, 1, 2])
    for rule in ("shannon", "released"):  # every class equally often: both are log C
        assert label_entropy(balanced, rule).item() == pytest.approx(math.log(3), rel=1e-6)
    # the released bincount stops at the batch's largest label: classes above it do not count
    assert label_entropy(torch.tensor([0, 1]), "released").item() == pytest.approx(math.log(2), rel=1e-6)


def test_feature_entropy_is_the_mean_entropy_of_softmax_over_the_feature_vector():
    flat = torch.zeros(3, 8)
    assert feature_entropy(flat).item() == pytest.approx(math.log(8), rel=1e-6)
    phi = torch.tensor([[math.log(3.0), 0.0], [0.0, 0.0]])  # softmax (3/4, 1/4) and (1/2, 1/2)
    h0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert feature_entropy(phi).item() == pytest.approx((h0 + math.log(2)) / 2, rel=1e-6)
    # the released nn.CrossEntropyLoss()(φ, softmax(φ))
    assert feature_entropy(phi).item() == pytest.approx(F.cross_entropy(phi, torch.softmax(phi, 1)).item(), rel=1e-6)


def released_ratios(score_a, score_v, hy, ha, hv, temperature):
    """The released two-modality ``modal_caculate_MI`` (train_test.py l. 85-95), in plain Python."""
    if score_a + hy + 0.5 <= 0 or score_v + hy + 0.5 <= 0:
        return 0.5, 0.5
    t_v, t_a = (score_v + hy + 0.5) / hv / temperature, (score_a + hy + 0.5) / ha / temperature
    coeff_a = math.exp(t_v) / (math.exp(t_v) + math.exp(t_a))
    coeff_v = math.exp(t_a) / (math.exp(t_v) + math.exp(t_a))
    return min(max(coeff_a, 0.1), 0.9), min(max(coeff_v, 0.1), 0.9)


def test_update_ratios_are_the_released_two_modality_rule_and_the_dominant_modality_gets_the_smaller():
    ce, hf, hy = torch.tensor([0.4, 1.0]), torch.tensor([2.0, 2.5]), torch.tensor(math.log(3))
    rate, ratio, fallback = update_ratios(ce, hf, hy, temperature=0.5)
    r = [(math.log(3) - 0.4 + 0.5) / 2.0, (math.log(3) - 1.0 + 0.5) / 2.5]
    torch.testing.assert_close(rate, torch.tensor(r))
    expected = released_ratios(-0.4, -1.0, math.log(3), 2.0, 2.5, 0.5)
    torch.testing.assert_close(ratio, torch.tensor(expected))
    assert not fallback and ratio[0] < 0.5 < ratio[1]  # audio (lower CE) dominates: fewer of its units update
    # the clip to [0.1, 0.9]
    _, ratio, _ = update_ratios(torch.tensor([0.0, 1.0]), torch.tensor([0.1, 10.0]), hy, temperature=0.2)
    torch.testing.assert_close(ratio, torch.tensor([0.1, 0.9]))
    # H(Y) − CE_m + 0.5 ≤ 0 for any modality: every ratio 0.5, the rate reported as 1
    rate, ratio, fallback = update_ratios(torch.tensor([0.4, 2.0]), hf, hy, temperature=0.5)
    assert fallback and torch.equal(ratio, torch.full((2,), 0.5)) and torch.equal(rate, torch.ones(2))
    # the offset is a parameter (the NVGesture code uses 3)
    _, _, fallback = update_ratios(torch.tensor([0.4, 2.0]), hf, hy, temperature=0.5, offset=3.0)
    assert not fallback
    # an undefined rate (H_m = 0 for both): NaN ratios become 0.5
    _, ratio, _ = update_ratios(torch.tensor([0.4, 1.0]), torch.zeros(2), hy, temperature=0.5)
    torch.testing.assert_close(ratio, torch.full((2,), 0.5))


def test_three_modalities_use_one_minus_softmax():
    ce, hf, hy = torch.tensor([0.2, 0.6, 1.0]), torch.tensor([2.0, 2.0, 2.0]), torch.tensor(1.0)
    _, ratio, _ = update_ratios(ce, hf, hy, temperature=1.0)
    t = torch.tensor([(1 - c + 0.5) / 2 for c in (0.2, 0.6, 1.0)])
    torch.testing.assert_close(ratio, (1 - torch.softmax(t, 0)).clamp(0.1, 0.9))
    assert ratio[0] < ratio[1] < ratio[2]
    assert AMSS.notes(ConcatFusion, 3)[0].startswith("extension:") and AMSS.notes(ConcatFusion, 2) == []


# --- the sampling --------------------------------------------------------------------------------------------------


def test_sampling_draws_ceil_n_ratio_units_per_row_and_zero_importance_last():
    g = torch.Generator().manual_seed(0)
    importance = torch.rand(50, 7, generator=g) + 0.01
    drawn, q = sample_units(importance, torch.tensor(0.3), g)
    assert (drawn.sum(1) == math.ceil(7 * 0.3)).all()
    torch.testing.assert_close(q.sum(1), torch.ones(50))
    # units without importance are drawn only once every other is: 2 of the 4 nonzero ones, then the 4 zeros
    importance = torch.tensor([[0.0, 1.0, 0.0, 2.0, 3.0, 0.0, 4.0, 0.0]]).repeat(200, 1)
    drawn, _ = sample_units(importance, torch.tensor(0.25), g)
    assert not drawn[:, importance[0] == 0].any() and (drawn.sum(1) == 2).all()
    drawn, _ = sample_units(importance, torch.tensor(0.75), g)
    assert drawn[:, importance[0] > 0].all() and (drawn.sum(1) == 6).all()
    # no gradient at all: uniform over the units
    drawn, q = sample_units(torch.zeros(4000, 4), torch.tensor(0.25), g)
    assert torch.equal(q, torch.full((4000, 4), 0.25)) and (drawn.sum(1) == 1).all()
    assert (drawn.float().mean(0) - 0.25).abs().max() < 0.03
    # ⌈N·ξ⌉ in float64, as the released Python float product: float32(0.1)·10 is just above 1
    drawn, _ = sample_units(torch.ones(1, 10), torch.tensor(0.1), g)
    assert drawn.sum() == math.ceil(10 * torch.tensor(0.1).item()) == 2


def test_sampling_has_the_distribution_of_multinomial_without_replacement():
    n = 20000
    q = torch.tensor([0.6, 0.3, 0.1])
    g = torch.Generator().manual_seed(1)
    one, _ = sample_units(q.repeat(n, 1), torch.tensor(0.3), g)  # k = ⌈0.9⌉ = 1: P(i) = q_i
    assert (one.float().mean(0) - q).abs().max() < 0.015
    two, _ = sample_units(q.repeat(n, 1), torch.tensor(0.5), g)  # k = 2: successive sampling's inclusion
    inclusion = torch.tensor([q[i] + sum(q[j] * q[i] / (1 - q[j]) for j in range(3) if j != i) for i in range(3)])
    assert (two.float().mean(0) - inclusion).abs().max() < 0.015
    torch.manual_seed(2)
    reference = torch.zeros(3)
    for _ in range(4000):
        reference[torch.multinomial(q, 2, replacement=False)] += 1
    assert (reference / 4000 - inclusion).abs().max() < 0.03


def test_unit_mask_is_per_filter_and_amss_plus_scales_by_one_over_q_plus_one_over_n():
    g = torch.Generator().manual_seed(3)
    grad = torch.randn(6, 2, 3, 3, generator=g)
    importance = grad.pow(2).sum(dim=(1, 2, 3))
    q = importance / importance.sum()
    for plus in (False, True):
        state = g.get_state()
        mask = unit_mask(grad, torch.tensor(0.5), plus, rows=False, generator=g)
        assert mask.shape == (6, 1, 1, 1)
        drawn = mask.flatten() != 0
        assert drawn.sum() == 3
        expected = 1 / (q + 1 / 6) if plus else torch.ones(6)
        torch.testing.assert_close(mask.flatten()[drawn], expected[drawn])
        g.set_state(state)  # the same draw with and without the scaling
    # rows: each row of a 2-D block independently, entries as units
    block = torch.randn(3, 8, generator=g)
    mask = unit_mask(block, torch.tensor(0.4), True, rows=True, generator=g)
    assert mask.shape == (3, 8) and ((mask != 0).sum(1) == math.ceil(8 * 0.4)).all()
    qr = block.pow(2) / block.pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(mask[mask != 0], (1 / (qr + 1 / 8))[mask != 0])


# --- one step, gradient by gradient ---------------------------------------------------------------------------------


def ready(balancer, model, seed: int = 0):
    ctx = RunContext(modalities=list(model.modalities), num_epochs=10, device=torch.device("cpu"), seed=seed)
    balancer.setup(model, ctx)
    return balancer


def step(balancer, model, inputs, y):
    model.zero_grad(set_to_none=True)
    out = balancer.forward(model, inputs)
    loss = balancer.loss(out, y)
    loss.backward()
    balancer.after_backward(out, y)
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def reference_grads(model, inputs, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(inputs).logits, y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def ratios_by_hand(model, inputs, y, temperature=0.2):
    """ξ of the released two-modality rule from the model's features and its concat head (W_m·φ_m + b/2)."""
    with torch.no_grad():
        features = model.encode(inputs)
        w, b = model.fusion.head.weight, model.fusion.head.bias
        scores, entropies, start = [], [], 0
        for m in ("audio", "visual"):
            phi = features[m]
            z = phi @ w[:, start : start + phi.shape[1]].T + b / 2
            start += phi.shape[1]
            scores.append(-F.cross_entropy(z, y).item())
            p = torch.softmax(phi, 1)
            entropies.append(-(p * p.log()).sum(1).mean().item())
        freq = torch.bincount(y).float() / len(y)
        hy = -(freq * freq.log()).sum().item()
    return released_ratios(scores[0], scores[1], hy, entropies[0], entropies[1], temperature)


@pytest.mark.parametrize("variant", ["amss", "amss+"])
def test_a_step_masks_filters_of_the_encoders_convolutions_and_leaves_every_other_gradient(variant):
    inputs, y = small_batch(n=12)
    model = small_model("concat")
    ref = reference_grads(model, inputs, y)
    amss = ready(AMSS(variant=variant), model)
    _, got = step(amss, model, inputs, y)
    xi = ratios_by_hand(model, inputs, y)
    torch.testing.assert_close(amss.ratio, torch.tensor(xi))
    masked = {id(p) for units in amss.units.values() for p, _, _ in units}
    assert len(masked) == 8  # small_cnn: four convolutions per modality, no residual blocks (noted)
    assert amss.run_notes[0].startswith("mask: conv masks every convolution weight")
    for name, p in model.named_parameters():
        if id(p) not in masked:
            assert torch.equal(got[name], ref[name]), name  # BN, the head: untouched
            continue
        modality = name.split(".")[1]
        ratio = xi[0] if modality == "audio" else xi[1]
        g, r = got[name].flatten(1), ref[name].flatten(1)
        kept = (g != 0).any(1)
        assert kept.sum() == math.ceil(r.shape[0] * ratio), name
        assert torch.equal(g[~kept], torch.zeros_like(g[~kept]))
        if variant == "amss":
            assert torch.equal(g[kept], r[kept]), name
        else:
            importance = r.pow(2).sum(1)
            scale = 1 / (importance / importance.sum() + 1 / r.shape[0])
            torch.testing.assert_close(g[kept], r[kept] * scale[kept, None])
    summary = amss.epoch_summary()
    assert summary["ratio_audio"] == pytest.approx(xi[0], rel=1e-5) and summary["fallback"] == 0.0
    assert 0 < summary["mask_mean_audio"] and (variant == "amss+" or summary["mask_mean_audio"] <= 1)


def test_the_draws_come_from_the_methods_generator_seeded_by_the_run_and_resume_with_its_state():
    inputs, y = small_batch(n=12)
    model = small_model("concat")
    first = ready(AMSS(), model, seed=0)
    before = torch.get_rng_state()
    _, a = step(first, model, inputs, y)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is not consumed
    _, same = step(ready(AMSS(), model, seed=0), model, inputs, y)
    assert all(torch.equal(a[n], same[n]) for n in a)
    others = [step(ready(AMSS(), model, seed=s), model, inputs, y)[1] for s in (1, 2, 3)]
    assert any(not torch.equal(o[n], a[n]) for o in others for n in a)
    # the state after a step, restored into a new instance, gives the next step's masks
    state = first.state_dict()
    assert isinstance(state["generator_state"], torch.Tensor)
    _, next_step = step(first, model, inputs, y)
    resumed = ready(AMSS(), model, seed=0)
    resumed.load_state_dict(state, torch.device("cpu"))
    _, again = step(resumed, model, inputs, y)
    assert all(torch.equal(next_step[n], again[n]) for n in next_step)
    assert any(not torch.equal(next_step[n], a[n]) for n in a)


def test_the_more_significant_modality_updates_fewer_units():
    """Pass-through encoders and an identity concat head: audio's features are confident and right, visual's flat."""
    model = MultimodalModel({"audio": Flat(3), "visual": Flat(3)}, ConcatFusion({"audio": 3, "visual": 3}, 3), 3)
    with torch.no_grad():
        model.fusion.head.weight.copy_(torch.cat([torch.eye(3), torch.eye(3)], 1))
        model.fusion.head.bias.zero_()
    y = torch.arange(9) % 3
    inputs = {"audio": 4 * F.one_hot(y, 3).float(), "visual": 0.1 * torch.randn(9, 3)}
    amss = AMSS(temperature=0.2)
    amss.model = model
    rate, ratio, fallback = amss.significance(model(inputs), y)
    assert not fallback and rate[0] > rate[1] and ratio[0] < 0.5 < ratio[1]


# --- which parameters ------------------------------------------------------------------------------------------------


def test_mask_conv_is_the_released_name_rule_on_resnet18_and_r2plus1d():
    encoder = ResNet18("spectrogram", (1, 32, 32))
    weights, blocks = residual_block_convolutions(encoder)
    names = {id(p): n for n, p in encoder.named_parameters()}
    assert blocks and len(weights) == 16
    assert all(".conv" in names[id(w)] for w in weights)  # neither trunk.0 (the stem) nor the downsample convs
    net = torchvision.models.resnet18(weights=None)
    released = [p.shape for n, p in net.named_parameters() if "layer" in n and "conv" in n and p.dim() == 4]
    assert [w.shape for w in weights] == released
    video = torchvision.models.video.r2plus1d_18(weights=None)
    vnames = {id(p): n for n, p in video.named_parameters()}
    weights, _ = residual_block_convolutions(video)
    rule = {n for n, p in video.named_parameters() if "layer" in n and "conv" in n and p.dim() == 5}
    assert {vnames[id(w)] for w in weights} == rule and len(rule) == 32


def test_declared_all_and_encoders_without_convolutions():
    mlp = MLPEncoder("vector", (5,), hidden=4, layers=2)
    assert masked_parameters(mlp, "conv") == []
    assert [p.shape for p in masked_parameters(mlp, "declared")] == [(4, 5), (4, 4)]
    assert len(masked_parameters(mlp, "all")) == len(list(mlp.parameters()))
    assert "mask: declared" in AMSS.backbone_unsupported(MLPEncoder, {})
    assert AMSS.backbone_unsupported(MLPEncoder, {"mask": "declared"}) is None
    assert AMSS.backbone_unsupported(SmallCNN, {}) is None
    model = MultimodalModel(
        {
            "a": MLPEncoder("vector", (5,), hidden=4, dropout=0.0),
            "b": MLPEncoder("vector", (3,), hidden=4, dropout=0.0),
        },
        ConcatFusion({"a": 4, "b": 4}, 2),
        2,
    )
    with pytest.raises(ValueError, match="no convolution weights"):
        ready(AMSS(), model)
    amss = ready(AMSS(mask="all"), model)
    x, y = {"a": torch.randn(8, 5), "b": torch.randn(8, 3)}, torch.arange(8) % 2
    ref = reference_grads(model, x, y)
    _, got = step(amss, model, x, y)
    bias = got["encoders.a.trunk.0.bias"]  # a 1-D parameter: its entries are the units
    assert (bias != 0).sum() == math.ceil(4 * amss.ratio[0].item())
    assert torch.equal(got["fusion.head.weight"], ref["fusion.head.weight"])
    assert any(n.startswith("extension: mask: all") for n in amss.run_notes)


def test_mask_head_masks_each_class_row_of_the_modalitys_block_only():
    inputs, y = small_batch(n=12)
    model = small_model("concat")
    ref = reference_grads(model, inputs, y)
    amss = ready(AMSS(mask_head=True), model)
    _, got = step(amss, model, inputs, y)
    head = got["fusion.head.weight"]
    for i, m in enumerate(model.modalities):
        block = model.fusion.slices[m]
        part, whole = head[:, block], ref["fusion.head.weight"][:, block]
        kept = part != 0
        assert (kept.sum(1) == math.ceil(part.shape[1] * amss.ratio[i].item())).all()
        assert torch.equal(part[kept], whole[kept])
    assert torch.equal(got["fusion.head.bias"], ref["fusion.head.bias"])
    assert any(n.startswith("option: mask_head") for n in amss.run_notes)
    # sum fusion: each modality's own head weight, its bias not; FiLM: no per-modality block (noted)
    sum_model = small_model("sum")
    amss = ready(AMSS(mask_head=True), sum_model)
    rows = [p for units in amss.units.values() for p, _, by_rows in units if by_rows]
    assert rows == [sum_model.fusion.heads[m].weight for m in sum_model.modalities]
    film = small_model("film")
    assert isinstance(film.fusion, FiLMFusion)
    amss = ready(AMSS(mask_head=True), film)
    assert any("has no per-modality weight block" in n for n in amss.run_notes)
    assert isinstance(sum_model.fusion, SumFusion)


def test_parameters_are_checked_and_multi_label_is_not_applicable():
    for bad in ({"variant": "amss++"}, {"mask": "head"}, {"label_entropy": "bits"}, {"temperature": 0.0}):
        with pytest.raises(ValueError):
            AMSS(**bad)
    assert "one true class" in AMSS.not_applicable(ConcatFusion, 2, multi_label=True)
    assert AMSS.not_applicable(ConcatFusion, 2, multi_label=False) is None
    note = ready(AMSS(label_entropy="released"), small_model()).run_notes
    assert any(n.startswith("option: label_entropy: released") for n in note)


# --- in the harness ----------------------------------------------------------------------------------------------

ENTRIES = {
    "amss": {},
    "amss_plus": {"class": "benchmark.balancers.amss:AMSS", "variant": "amss+", "mask_head": True},
}


@pytest.fixture
def amss_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["balancers"].update(copy.deepcopy(ENTRIES))
    return validate_config(cfg)


def test_a_wrong_value_in_the_config_is_refused(amss_cfg):
    cfg = copy.deepcopy(amss_cfg)
    cfg["grid"][0]["balancers"] = ["amss"]  # the config checks the parameters of the methods in its grid
    cfg["balancers"]["amss"] = {"variant": "amss++"}
    with pytest.raises(ValueError, match="balancers.amss.variant"):
        validate_config(cfg)


@pytest.mark.parametrize("method", list(ENTRIES))
def test_resuming_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(
    amss_cfg, tmp_path, monkeypatch, method
):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", method, 0)
    resume_reproduces(amss_cfg, spec, tmp_path, monkeypatch)
    history = json.loads((tmp_path / "full/metrics.json").read_text())["history"]
    assert {"rate_audio", "ratio_visual", "mask_mean_audio", "fallback"} <= set(history[0])


@pytest.mark.parametrize("method", ["amss"])  # amss_plus trains in the resume test
def test_one_epoch_in_the_harness_finishes_ok(amss_cfg, method):
    cfg = copy.deepcopy(amss_cfg)
    cfg["train"]["epochs"] = 1
    metrics, _ = execute_run(validate_config(cfg), RunSpec("synthetic-av", "small_cnn", "concat", method, 0), log=quiet)
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    row = metrics["history"][0]
    assert 0.1 <= row["ratio_audio"] <= 0.9 and 0.1 <= row["ratio_visual"] <= 0.9
    assert 0 < row["mask_mean_audio"] and (method == "amss_plus" or row["mask_mean_audio"] < 1)
