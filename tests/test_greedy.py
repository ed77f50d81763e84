"""Balanced multi-modal learning (Wu et al., ICML 2022; ``greedy``) on hand-computed cases, at gradient level,
resumed, and in the harness.

The model-level cases use the small CNN with the SE gate after block 2 (the paper's mid-level setting: the gate into
stream m reads only the other stream) and with concatenation, where the method inserts MMTM modules between the
encoder blocks (BalanceBenchmark's adaptation)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml

from benchmark.balancers.base import RunContext
from benchmark.balancers.greedy import Greedy, MMTMFusion, conditional_speeds, group_ratio, imbalance
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.backbones import BACKBONES, SmallCNN
from benchmark.models.fusions import FUSIONS
from benchmark.models.model import MultimodalModel
from benchmark.models.stream_fusions import SEGateFusion
from benchmark.run import execute_run
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces

# --- the rules ----------------------------------------------------------------------------------------------


def test_group_ratio_is_the_ratio_of_summed_squared_gradients_and_weights_slices_included():
    p = torch.nn.Parameter(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    p.grad = torch.tensor([[1.0, 5.0], [0.0, 7.0]])
    q = torch.nn.Parameter(torch.tensor([2.0]))  # no gradient: counts as zero in the numerator
    # column 0 of p: weights 1, 3 (10), gradients 1, 0 (1); q: weight 4, gradient 0 -> 1 / 14
    assert math.isclose(group_ratio([(p, (slice(None), slice(0, 1))), (q, None)]).item(), 1 / 14)
    # the whole of p: (1 + 25 + 49) / 30
    assert math.isclose(group_ratio([(p, None)]).item(), 75 / 30)


def test_conditional_speeds_and_imbalance_hand_computed_two_and_three_modalities():
    v = conditional_speeds(torch.tensor([0.02, 0.001]), torch.tensor([0.002, 0.01]))
    assert torch.allclose(v, torch.tensor([1.0, -1.0]))  # log10(10), log10(0.1)
    assert torch.allclose(imbalance(v), torch.tensor([2.0, -2.0]))  # d = v_0 − v_1 and its negative
    # three modalities (extension): d_m = v_m − mean of the others
    assert torch.allclose(imbalance(torch.tensor([3.0, 0.0, 0.0])), torch.tensor([3.0, -1.5, -1.5]))
    assert torch.allclose(imbalance(torch.tensor([1.0, 2.0, 6.0])), torch.tensor([-3.0, -1.5, 4.5]))


# --- the SE-gate model (the paper's mid-level setting) -----------------------------------------------------------


def se_gate_model(seed: int = 0) -> MultimodalModel:
    torch.manual_seed(seed)
    encoders = {
        "audio": SmallCNN("spectrogram", (1, 16, 16), width=2),
        "visual": SmallCNN("frames", (2, 3, 8, 8), width=2),
    }
    fusion = SEGateFusion({m: e.out_dim for m, e in encoders.items()}, 3, block=2, reduction=1)
    fusion.bind(encoders)
    shapes = {"audio": (1, 16, 16), "visual": (2, 3, 8, 8)}
    return MultimodalModel(encoders, fusion, 3, input_shapes=shapes)


def setup(balancer: Greedy, model: MultimodalModel, epoch: int = 0, num_epochs: int = 4) -> Greedy:
    model = balancer.configure_model(model)
    ctx = RunContext(modalities=list(model.modalities), num_epochs=num_epochs, device=torch.device("cpu"), epoch=epoch)
    balancer.setup(model, ctx)
    balancer.on_epoch_start(epoch)
    return balancer


def step(balancer: Greedy, inputs, y) -> dict[str, torch.Tensor | None]:
    model = balancer.model
    model.zero_grad(set_to_none=True)
    out = balancer.forward(model, inputs)
    balancer.loss(out, y).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    balancer.after_backward(out, y)
    return grads | {"_after": {n: p.grad for n, p in model.named_parameters()}}


def ratio_by_hand(model, grads, names, head_slice=None) -> float:
    params = dict(model.named_parameters())
    gn = sum(float((grads[n] ** 2).sum()) for n in names if grads[n] is not None)
    wn = sum(float((params[n].detach() ** 2).sum()) for n in names)
    if head_slice is not None:
        gn += float((grads["fusion.head.weight"][:, head_slice] ** 2).sum())
        wn += float((params["fusion.head.weight"].detach()[:, head_slice] ** 2).sum())
    return gn / wn


def test_a_regular_step_accumulates_mu_by_hand_and_triggers_on_the_modality_with_the_larger_speed():
    model = se_gate_model()
    g = setup(Greedy(epsilon=0.0, window=3, start_epoch=0, rebalance_update="branch"), model)
    inputs, y = small_batch()
    grads = step(g, inputs, y)
    names = [n for n, _ in model.named_parameters()]
    mu_b, mu_m = [], []
    for m, other in (("audio", "visual"), ("visual", "audio")):
        mu_b.append(ratio_by_hand(model, grads, [n for n in names if n.startswith(f"fusion.gates.{m}.")]))
        enc = [n for n in names if n.startswith(f"encoders.{m}.")]
        mu_m.append(ratio_by_hand(model, grads, enc, model.fusion.slices[m]))
    assert torch.allclose(g.mu_bypass, torch.tensor(mu_b, dtype=torch.float64), rtol=1e-6)
    assert torch.allclose(g.mu_main, torch.tensor(mu_m, dtype=torch.float64), rtol=1e-6)
    v = [math.log10(b / m) for b, m in zip(mu_b, mu_m)]
    expected = "audio" if v[0] > v[1] else "visual"
    assert g.remaining == 3 and g.caring == expected  # |d| > ε = 0: the next 3 steps re-balance it
    # a second regular step adds its own ratios: μ is the running sum, not the last value
    g2 = setup(Greedy(epsilon=1e9, start_epoch=0, rebalance_update="branch"), se_gate_model())
    step(g2, inputs, y)
    first = g2.mu_bypass.clone()
    step(g2, inputs, y)
    assert (g2.mu_bypass > first).all() and g2.remaining == 0  # ε huge: never triggered


def test_rebalancing_steps_cut_the_flow_into_the_branch_update_it_alone_and_leave_mu_alone():
    model = se_gate_model()
    g = setup(Greedy(epsilon=0.0, window=2, start_epoch=0, rebalance_update="branch"), model)
    raw, seen = {}, {}
    for m in model.modalities:  # raw: registered before the method's hook; seen: after it (what the stream gets)
        model.fusion.gates[m].register_forward_hook(lambda mod, a, o, m=m: raw.__setitem__(m, o.detach().clone()))
    g.setup(model, g.ctx)  # the method's hooks again, now after the raw ones
    for m in model.modalities:
        model.fusion.gates[m].register_forward_hook(lambda mod, a, o, m=m: seen.__setitem__(m, o))
    inputs, y = small_batch()
    step(g, inputs, y)  # regular: triggers
    caring = g.caring
    other = next(m for m in model.modalities if m != caring)
    first_raw = {m: raw[m].mean(0) for m in model.modalities}
    mu = (g.mu_bypass.clone(), g.mu_main.clone())
    grads = step(g, inputs, y)  # re-balancing step 1 of 2
    key = f"2:{caring}"
    # the running mean over the two training forwards of the batch-mean excitation, by hand
    assert torch.allclose(g.running[key], (first_raw[caring] + raw[caring].mean(0)) / 2)
    # the stream gets the mean of the previous forwards (here the first batch's mean), nothing of this batch
    assert torch.equal(seen[caring], first_raw[caring].expand_as(seen[caring])) and not seen[caring].requires_grad
    assert torch.equal(seen[other], raw[other])  # the other stream keeps its gate
    # the cut gate gets no gradient; after the hook only branch `caring` (its encoder) keeps gradients
    assert all(grads[n] is None for n in grads if n.startswith(f"fusion.gates.{caring}."))
    after = grads["_after"]
    for n, grad in after.items():
        assert (grad is not None) == n.startswith(f"encoders.{caring}."), n
    assert torch.equal(g.mu_bypass, mu[0]) and torch.equal(g.mu_main, mu[1])  # no measurement in re-balancing
    assert g.remaining == 1
    step(g, inputs, y)  # re-balancing step 2 of 2
    assert g.remaining == 0 and g.rebalancing == caring
    step(g, inputs, y)  # regular again: measured (and, ε = 0, triggered again)
    assert g.rebalancing is None and (g.mu_bypass > mu[0]).all()
    summary = g.epoch_summary()
    assert summary[f"rebalance_{caring}"] == 2 / 4 and summary[f"rebalance_{other}"] == 0
    assert f"speed_{caring}" in summary and f"imbalance_{caring}" in summary


def test_in_a_rebalancing_forward_the_branch_does_not_see_the_other_modality():
    g = setup(Greedy(epsilon=0.0, window=5, start_epoch=0, rebalance_update="branch"), se_gate_model())
    inputs, y = small_batch()
    step(g, inputs, y)
    caring = g.caring
    other = next(m for m in g.modalities if m != caring)
    changed = dict(inputs)
    changed[other] = inputs[other] + 3.0
    state = copy.deepcopy((g.running, g.forwards))

    def features(x, rebalancing):
        g.running, g.forwards = copy.deepcopy(state)
        g.remaining = 5 if rebalancing else 0
        return g.forward(g.model, x).features

    assert torch.equal(features(inputs, True)[caring], features(changed, True)[caring])
    assert not torch.equal(features(inputs, True)[other], features(changed, True)[other])
    assert not torch.equal(features(inputs, False)[caring], features(changed, False)[caring])  # regular: it does


def test_warm_up_measures_but_never_triggers_and_the_released_option_updates_everything():
    g = setup(Greedy(epsilon=0.0, window=2, start_epoch=1, rebalance_update="branch"), se_gate_model(), epoch=0)
    inputs, y = small_batch()
    for _ in range(3):
        step(g, inputs, y)
    assert g.remaining == 0 and (g.mu_bypass > 0).all()  # epoch 0 < start_epoch 1
    g.ctx.epoch = 1
    g.on_epoch_start(1)
    step(g, inputs, y)
    assert g.remaining == 2
    # rebalance_update: all (the released code): every parameter with a gradient keeps it
    a = setup(Greedy(epsilon=0.0, window=2, start_epoch=0, rebalance_update="all"), se_gate_model())
    step(a, inputs, y)
    grads = step(a, inputs, y)
    kept = {n for n, grad in grads["_after"].items() if grad is not None}
    assert kept == {n for n, grad in grads.items() if n != "_after" and grad is not None}
    assert any(n.startswith("fusion.head") for n in kept) and any(
        n.startswith(f"encoders.{a.rebalancing}") for n in kept
    )
    assert not any("rebalance_update: branch" in note for note in a.run_notes)  # the released default: no note
    assert any("rebalance_update: branch" in note for note in g.run_notes)


# --- late fusion: BalanceBenchmark's MMTM adaptation ------------------------------------------------------------


def test_late_fusion_gets_mmtm_between_blocks_with_the_hand_counted_parameters():
    plain = small_model("concat")
    n_plain = sum(p.numel() for p in plain.parameters())
    model = Greedy().configure_model(copy.deepcopy(plain))
    assert isinstance(model.fusion, MMTMFusion) and model.fusion.after == [2, 3, 4]  # every block but the first
    # SmallCNN width 2: channels 4, 8, 8 after blocks 2-4; an MMTM at c channels per stream (2 streams, ratio 4):
    # squeeze 2c -> c (2c² + c), excite c -> c per stream (2·(c² + c)): 4c² + 3c
    assert sum(p.numel() for p in model.parameters()) - n_plain == sum(4 * c * c + 3 * c for c in (4, 8, 8))
    one = Greedy(mmtm_after=[3]).configure_model(copy.deepcopy(plain))
    assert list(one.fusion.mmtm) == ["3"]
    with pytest.raises(ValueError, match="mmtm_after"):
        Greedy(mmtm_after=[5]).configure_model(copy.deepcopy(plain))
    # excitations of 1 (σ(50)): the model is the plain late-fusion model, head and per-modality logits included
    with torch.no_grad():
        for mmtm in model.fusion.mmtm.values():
            for seq in mmtm.excite.values():
                seq[0].weight.zero_()
                seq[0].bias.fill_(50.0)
    inputs, _ = small_batch()
    plain.eval(), model.eval()
    out, ref = model(inputs), plain(inputs)
    assert torch.allclose(out.logits, ref.logits, atol=1e-6)
    for m in model.modalities:
        assert torch.allclose(model.modality_logits(out)[m], plain.modality_logits(ref)[m], atol=1e-6)
    assert model.fusion.modality_head_params("audio")[0][0] is model.fusion.inner.head.weight


def test_late_fusion_groups_count_the_shared_squeeze_for_every_modality_and_rebalancing_cuts_mmtm():
    g = setup(Greedy(epsilon=0.0, window=2, start_epoch=0, rebalance_update="branch"), small_model("sum"))
    model = g.model
    squeeze = {id(p) for k in model.fusion.mmtm for p in model.fusion.mmtm[k].squeeze.parameters()}
    for m in model.modalities:
        ids = {id(p) for p, _ in g.bypass[m]}
        excite = {id(p) for k in model.fusion.mmtm for p in model.fusion.mmtm[k].excite[m].parameters()}
        assert ids == squeeze | excite
        # sum fusion: branch m's own head is whole, so a re-balancing step updates it with the encoder
        assert {id(p) for p in model.fusion.inner.heads[m].parameters()} <= g.updated[m]
    inputs, y = small_batch()
    step(g, inputs, y)
    caring = g.caring
    other = next(m for m in model.modalities if m != caring)
    grads = step(g, inputs, y)
    prefixes = (f"encoders.{caring}.", f"fusion.inner.heads.{caring}.")
    for n, grad in grads["_after"].items():
        assert (grad is not None) == n.startswith(prefixes), n
    changed = dict(inputs)
    changed[other] = inputs[other] - 2.0
    state = copy.deepcopy((g.running, g.forwards))
    feats = []
    for x in (inputs, changed):
        g.running, g.forwards = copy.deepcopy(state)
        g.remaining = 2
        feats.append(g.forward(model, x).features[caring])
    assert torch.equal(feats[0], feats[1])
    assert all("rebalance_update: branch" in n for n in g.run_notes)  # no shared-head note with sum fusion


# --- declarations -----------------------------------------------------------------------------------------------


def test_declarations_na_reasons_and_notes():
    for name in ("concat", "sum", "se_gate"):
        assert Greedy.not_applicable(FUSIONS.get(name), 2, False) is None
        assert Greedy.not_applicable(FUSIONS.get(name), 3, True) is None  # fused task loss only: multi-label fine
    for name in ("mid_mlp", "film", "gated", "transformer", "lmf"):
        assert "cross-modal path" in Greedy.not_applicable(FUSIONS.get(name), 2, False)
    assert "attention" in Greedy.not_applicable(FUSIONS.get("nl_gate"), 2, False)
    assert "streams merge" in Greedy.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert "no block" in Greedy.backbone_unsupported(BACKBONES.get("conformer"), {})
    assert Greedy.backbone_unsupported(BACKBONES.get("small_cnn"), {}) is None
    assert any("MMTM" in n for n in Greedy.notes(FUSIONS.get("concat"), 2))
    assert any("gate into stream m" in n for n in Greedy.notes(FUSIONS.get("se_gate"), 2))
    assert any(n.startswith("extension") for n in Greedy.notes(FUSIONS.get("concat"), 3))
    assert not any(n.startswith("extension") for n in Greedy.notes(FUSIONS.get("concat"), 2))
    g = setup(Greedy(rebalance_update="branch"), small_model("concat"))
    assert any("shared by every branch" in n for n in g.run_notes)  # concat head: not stepped when re-balancing
    with pytest.raises(ValueError, match="rebalance_update"):
        Greedy(rebalance_update="some")


# --- in the harness -----------------------------------------------------------------------------------------

ENTRIES = {
    "greedy": {"epsilon": 0.0, "window": 2, "start_epoch": 1},
    "greedy_bb": {"class": "benchmark.balancers.greedy:Greedy", "preset": "balancebenchmark"},
}


@pytest.fixture
def greedy_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 4
    cfg["train"]["batch_size"] = 4  # several steps per epoch: regular and re-balancing steps alternate
    cfg["balancers"].update(copy.deepcopy(ENTRIES))
    return validate_config(cfg)


def test_resuming_from_the_epoch_two_checkpoint_reproduces_the_uninterrupted_run(greedy_cfg, tmp_path, monkeypatch):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "greedy", 0)
    full, _ = resume_reproduces(greedy_cfg, spec, tmp_path, monkeypatch)
    history = json.loads((tmp_path / "full/metrics.json").read_text())["history"]
    assert full["status"] == "ok"
    assert history[0]["rebalance_audio"] == history[0]["rebalance_visual"] == 0  # the warm-up epoch
    assert all(row["rebalance_audio"] + row["rebalance_visual"] > 0 for row in history[1:])
    assert "speed_audio" in history[0]


@pytest.mark.parametrize("method, fusion", [("greedy", "se_gate"), ("greedy_bb", "sum")])
def test_one_epoch_in_the_harness_finishes_ok(greedy_cfg, method, fusion):
    cfg = copy.deepcopy(greedy_cfg)
    cfg["train"]["epochs"] = 1
    cfg["balancers"]["greedy"]["start_epoch"] = 0
    metrics, _ = execute_run(validate_config(cfg), RunSpec("synthetic-av", "small_cnn", fusion, method, 0), log=quiet)
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    row = metrics["history"][0]
    assert math.isfinite(row["speed_audio"]) and "rebalance_visual" in row
    if method == "greedy":
        assert row["rebalance_audio"] + row["rebalance_visual"] > 0
