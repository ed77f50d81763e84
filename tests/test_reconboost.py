"""ReconBoost on hand-computed cases at gradient level: the released boosting loss and its KL form, which parameters a
boosting step and a rectification step move and by how much (a tiny linear model, every gradient by hand), the
consolidation extension, the per-epoch schedule and its optimizer resets, the boosted ensemble, what it runs on, one
epoch with the harness and resume."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.reconboost import BoostedEnsemble, ReconBoost, boosting_loss
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion, SumFusion
from benchmark.models.model import MultimodalModel
from benchmark.models.stream_fusions import MidConcatFusion, SEGateFusion
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces

MODALITIES = ["a", "v"]
K = 3


def ready(balancer: ReconBoost, model: MultimodalModel, epoch: int = 0, optimizer=None) -> ReconBoost:
    ctx = RunContext(modalities=list(model.modalities), num_epochs=8, device=torch.device("cpu"), epoch=epoch)
    ctx.optimizer = optimizer
    balancer.setup(model, ctx)
    return balancer


def step(balancer: ReconBoost, model: MultimodalModel, inputs: dict, y: torch.Tensor):
    """One training step as the loop runs it; the loss and every parameter's gradient (None-gradients left out)."""
    balancer.ctx.phase = balancer.phases(balancer.ctx.epoch)[0]
    out = balancer.forward(model, inputs)
    loss = balancer.loss(out, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    balancer.after_backward(out, y)
    return loss, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# --- the boosting loss on numbers ---------------------------------------------------------------------------------


def test_boosting_loss_hand_computed_and_its_gradient_is_a_reweighted_cross_entropy_step():
    # K = 2, z = (0, 0): p = (1/2, 1/2); others = (ln 3, 0): q = (3/4, 1/4); y = 0; weight1 5, weight2 1
    z = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    others = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    loss, q_true = boosting_loss(z, others, torch.tensor([0]), 5.0, 1.0)
    # (1/K)·(w2·q_y − w1)·log p_y = (1/2)·(0.75 − 5)·log(1/2)
    assert loss.item() == pytest.approx(0.5 * (0.75 - 5) * math.log(0.5))
    assert q_true.item() == pytest.approx(0.75)
    loss.backward()
    # (1/K)·(w1 − w2·q_y)·(p − e_y) = (1/2)·4.25·(−1/2, 1/2)
    torch.testing.assert_close(z.grad, torch.tensor([[-1.0625, 1.0625]], dtype=torch.float64))
    assert others.grad is None  # the ensemble is a constant


def test_boosting_loss_is_task_loss_minus_a_kl_to_the_ensemble_weighted_target():
    g = torch.Generator().manual_seed(0)
    z, others = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    loss, _ = boosting_loss(z, others, y, 4.0, 1.5)
    p, q, onehot = torch.softmax(z, 1), torch.softmax(others, 1), F.one_hot(y, 4).double()
    target = onehot * q  # y ⊙ q
    kl = (target * (torch.log(target.clamp_min(1e-300)) - torch.log(p))).sum(1)  # KL(y⊙q ‖ p), 0·log 0 = 0
    constant = (target * torch.log(target.clamp_min(1e-300))).sum(1)  # does not depend on z
    ce = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(loss, ((4.0 * ce - 1.5 * kl) / 4 + 1.5 * constant / 4).mean())


# --- a tiny linear model, every gradient by hand ------------------------------------------------------------------


def tiny_model(fusion: str = "concat", beta: float = 0.7) -> MultimodalModel:
    """Linear encoders φ_m = E_m x + c_m (3 → 2), a concat head [W_a W_v] + b (or one head per modality), β = 0.7."""
    torch.manual_seed(0)
    encoders = {m: nn.Linear(3, 2) for m in MODALITIES}
    for e in encoders.values():
        e.out_dim = 2
    model = MultimodalModel(encoders, FUSIONS.get(fusion)({m: 2 for m in MODALITIES}, K), K)
    model = ReconBoost().configure_model(model)
    with torch.no_grad():
        model.fusion.boost_rate.fill_(beta)
    return model.double()  # float64: the hand computation below is compared tightly


def tiny_batch(n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(n, 3, generator=g, dtype=torch.float64) for m in MODALITIES}, torch.arange(n) % K


def by_hand(model: MultimodalModel, inputs: dict):
    """φ_m, the learners z_m = W_m φ_m + b/2 (concat) and the head blocks, without autograd."""
    with torch.no_grad():
        phi = {m: inputs[m] @ model.encoders[m].weight.T + model.encoders[m].bias for m in MODALITIES}
        head = model.fusion.inner.head
        blocks = {"a": head.weight[:, 0:2], "v": head.weight[:, 2:4]}
        z = {m: phi[m] @ blocks[m].T + head.bias / 2 for m in MODALITIES}
    return phi, blocks, z


def boost_gradients_by_hand(model, inputs, y, m, w1=5.0, w2=1.0, alpha=0.0):
    """∂L/∂z_m = (w1 − w2·q_y)(p − e_y)/(B·K) [+ (2α/(B·K))·J_softmax(p)·(p − p_prev)], then the chain rule."""
    phi, blocks, z = by_hand(model, inputs)
    other = "v" if m == "a" else "a"
    beta = model.fusion.boost_rate.item()
    b = len(y)
    with torch.no_grad():
        p, q = torch.softmax(z[m], 1), torch.softmax(beta * z[other], 1)
        q_y = q.gather(1, y[:, None])
        r = (w1 - w2 * q_y) * (p - F.one_hot(y, K).double()) / (b * K)
        loss = ((w2 * q_y.squeeze(1) - w1) * torch.log(p.gather(1, y[:, None]).squeeze(1)) / K).mean()
        if alpha:
            d = p - torch.softmax(z[other], 1)  # f_prev: for two modalities the other one
            r = r + 2 * alpha / (b * K) * p * (d - (p * d).sum(1, keepdim=True))
            loss = loss + alpha * (d**2).mean()
        cols = slice(0, 2) if m == "a" else slice(2, 4)
        head_w = torch.zeros_like(model.fusion.inner.head.weight)
        head_w[:, cols] = r.T @ phi[m]
        d_phi = r @ blocks[m]
        return loss.item(), {
            "fusion.inner.head.weight": head_w,
            "fusion.inner.head.bias": r.sum(0) / 2,  # b/M in each learner
            f"encoders.{m}.weight": d_phi.T @ inputs[m],
            f"encoders.{m}.bias": d_phi.sum(0),
        }


@pytest.mark.parametrize("modality, epoch", [("a", 0), ("v", 2)])
def test_a_boosting_step_moves_only_that_modalitys_encoder_and_head_by_the_hand_computed_gradient(modality, epoch):
    model = tiny_model()
    inputs, y = tiny_batch()
    balancer = ready(ReconBoost(), model, epoch=epoch)  # default: boost 1, rectify 1 → epoch 0: a, epoch 2: v
    assert balancer.phases(epoch) == (("boost", modality),)
    loss, got = step(balancer, model, inputs, y)
    hand_loss, hand = boost_gradients_by_hand(model, inputs, y, modality)
    assert loss.item() == pytest.approx(hand_loss, rel=1e-9)
    assert set(got) == set(hand)  # the other encoder and β get no gradient: the optimizer leaves them alone
    for name, g in hand.items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12)
    stats = balancer.epoch_summary()
    _, _, z = by_hand(model, inputs)
    other = "v" if modality == "a" else "a"
    q = torch.softmax(0.7 * z[other], 1).gather(1, y[:, None]).mean().item()
    assert stats[f"ensemble_true_prob_{modality}"] == pytest.approx(q, rel=1e-6)
    assert stats["boost_rate"] == pytest.approx(0.7)


def test_sum_fusion_learners_are_the_modality_heads_with_their_own_bias():
    model = tiny_model("sum")
    inputs, y = tiny_batch()
    balancer = ready(ReconBoost(weight1=2.0, weight2=1.5), model)
    _, got = step(balancer, model, inputs, y)
    assert {n for n in got if n.startswith("fusion.")} == {"fusion.inner.heads.a.weight", "fusion.inner.heads.a.bias"}
    with torch.no_grad():
        phi = {m: inputs[m] @ model.encoders[m].weight.T + model.encoders[m].bias for m in MODALITIES}
        z = {m: model.fusion.inner.heads[m](phi[m]) for m in MODALITIES}
        q_y = torch.softmax(model.fusion.boost_rate.item() * z["v"], 1).gather(1, y[:, None])
        r = (2.0 - 1.5 * q_y) * (torch.softmax(z["a"], 1) - F.one_hot(y, K).double()) / (len(y) * K)
    torch.testing.assert_close(got["fusion.inner.heads.a.weight"], r.T @ phi["a"], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["fusion.inner.heads.a.bias"], r.sum(0), rtol=1e-9, atol=1e-12)


def test_the_consolidation_extension_adds_its_gradient_from_stage_one_on_only():
    inputs, y = tiny_batch()
    model = tiny_model()
    balancer = ready(ReconBoost(alpha=0.5), model, epoch=2)  # stage 1: boost v, f_prev = the audio learner
    assert balancer.run_notes and "extension" in balancer.run_notes[0]
    loss, got = step(balancer, model, inputs, y)
    hand_loss, hand = boost_gradients_by_hand(model, inputs, y, "v", alpha=0.5)
    assert loss.item() == pytest.approx(hand_loss, rel=1e-9)
    for name, g in hand.items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12)
    assert "encoders.a.weight" not in got  # f_prev is detached
    # stage 0 (epoch 0): the released code skips the term in the first stage
    model = tiny_model()
    _, got = step(ready(ReconBoost(alpha=0.5), model, epoch=0), model, inputs, y)
    for name, g in boost_gradients_by_hand(model, inputs, y, "a")[1].items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12)
    # alpha 0 (the default, as the released detached term): only tracked, no gradient
    model = tiny_model()
    balancer = ready(ReconBoost(), model, epoch=2)
    _, got = step(balancer, model, inputs, y)
    for name, g in boost_gradients_by_hand(model, inputs, y, "v")[1].items():
        torch.testing.assert_close(got[name], g, rtol=1e-9, atol=1e-12)
    assert balancer.epoch_summary()["consolidation_v"] > 0 and ReconBoost().run_notes == []


def test_a_rectification_step_is_cross_entropy_of_the_boosted_ensemble_through_everything():
    model = tiny_model()
    inputs, y = tiny_batch()
    balancer = ready(ReconBoost(), model, epoch=1)
    assert balancer.phases(1) == (("rectify", None),)
    loss, got = step(balancer, model, inputs, y)
    phi, _, _ = by_hand(model, inputs)
    beta = model.fusion.boost_rate.item()  # 0.7 in float32
    with torch.no_grad():
        head = model.fusion.inner.head
        cat = torch.cat([phi["a"], phi["v"]], 1)
        s = cat @ head.weight.T + head.bias
        r = (torch.softmax(beta * s, 1) - F.one_hot(y, K).double()) / len(y)
        assert loss.item() == pytest.approx(F.cross_entropy(beta * s, y).item(), rel=1e-9)
        torch.testing.assert_close(got["fusion.boost_rate"], (r * s).sum(), rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(got["fusion.inner.head.weight"], beta * r.T @ cat, rtol=1e-9, atol=1e-12)
        for i, m in enumerate(MODALITIES):
            d_phi = beta * r @ head.weight[:, 2 * i : 2 * i + 2]
            torch.testing.assert_close(got[f"encoders.{m}.weight"], d_phi.T @ inputs[m], rtol=1e-9, atol=1e-12)


# --- schedule, optimizer resets, the ensemble ---------------------------------------------------------------------


def test_the_schedule_stages_boost_each_modality_in_turn_then_rectify():
    balancer = ready(ReconBoost(), ReconBoost().configure_model(small_model()))
    got = [balancer.phases(e)[0] for e in range(5)]
    assert got == [("boost", "audio"), ("rectify", None), ("boost", "visual"), ("rectify", None), ("boost", "audio")]
    encoders = {m: nn.Linear(3, 2) for m in ("a", "b", "c")}
    for e in encoders.values():
        e.out_dim = 2
    three = ReconBoost().configure_model(MultimodalModel(encoders, ConcatFusion({m: 2 for m in "abc"}, K), K))
    balancer = ready(ReconBoost(boost_epochs=2, rectify_epochs=1), three)
    kinds = [balancer.phase_of(e) for e in range(10)]
    assert kinds == [("boost", "a")] * 2 + [("rectify", None)] + [("boost", "b")] * 2 + [("rectify", None)] + [
        ("boost", "c")
    ] * 2 + [("rectify", None), ("boost", "a")]
    balancer = ready(ReconBoost(rectify_epochs=0), three)  # no rectification: the modalities in turn
    assert [balancer.phase_of(e)[1] for e in range(4)] == ["a", "b", "c", "a"]


@pytest.mark.parametrize("reset", [True, False])
def test_the_optimizer_state_is_dropped_at_the_first_epoch_of_every_phase_block(reset):
    model = tiny_model()
    inputs, y = tiny_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    balancer = ready(ReconBoost(boost_epochs=2, rectify_epochs=1, reset_momentum=reset), model, optimizer=optimizer)
    dropped = []
    for epoch in range(6):
        balancer.ctx.epoch = epoch
        model.zero_grad()
        F.cross_entropy(model(inputs).logits, y).backward()
        optimizer.step()  # momentum buffers for every parameter
        assert len(optimizer.state) == len(list(model.parameters()))
        balancer.on_epoch_start(epoch)
        dropped.append(len(optimizer.state) == 0)
    assert dropped == ([True, False, True, True, False, True] if reset else [False] * 6)


def test_the_boosted_ensemble_outputs_beta_times_the_fusion_and_splits_exactly():
    model = small_model("concat").double()
    inputs = {k: v.double() for k, v in small_batch()[0].items()}
    inner_out = model(inputs).logits
    ReconBoost(boost_rate=0.01).configure_model(model)
    assert isinstance(model.fusion, BoostedEnsemble) and model.fusion.boost_rate.item() == pytest.approx(0.01)
    assert ReconBoost().configure_model(model).fusion.inner.__class__ is ConcatFusion  # not wrapped twice
    out = model(inputs)
    torch.testing.assert_close(out.logits, 0.01 * inner_out)
    torch.testing.assert_close(sum(model.modality_logits(out).values()), out.logits)
    with pytest.raises(RuntimeError, match="configure_model"):
        ready(ReconBoost(), small_model())


def test_what_it_runs_on_and_the_notes():
    assert ReconBoost.not_applicable(ConcatFusion, 2, multi_label=False) is None
    assert ReconBoost.not_applicable(SumFusion, 3, multi_label=False) is None
    assert ReconBoost.not_applicable(ConcatFusion, 2, multi_label=True).startswith("needs single-label data")
    for name in ("mid_mlp", "gated", "film", "transformer", "lmf"):
        assert "mixes the modalities" in ReconBoost.not_applicable(FUSIONS.get(name), 2, multi_label=False), name
    assert "mixes the modalities" in ReconBoost.unsupported(SEGateFusion, 2)
    assert "does not have" in ReconBoost.not_applicable(MidConcatFusion, 2, multi_label=False)
    assert len(ReconBoost.notes(ConcatFusion, 3)) == 1 and len(ReconBoost.notes(ConcatFusion, 4)) == 2
    released = ReconBoost.presets["released"]
    assert (released["boost_epochs"], released["rectify_epochs"], released["weight1"], released["alpha"]) == (
        4,
        4,
        5,
        0,
    )
    assert ReconBoost.presets["balancebenchmark"]["boost_rate"] == 0.01


# --- the harness: one epoch, and resume ---------------------------------------------------------------------------


@pytest.fixture
def reconboost_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["reconboost"] = {"weight1": 5.0, "weight2": 1.0, "alpha": 0.0, "boost_epochs": 1}
    return cfg


@pytest.mark.parametrize("fusion", ["concat", "sum"])
def test_one_epoch_with_the_harness(reconboost_cfg, fusion):
    from benchmark.run import execute_run

    cfg = validate_config(reconboost_cfg)
    metrics, state = execute_run(cfg, RunSpec("synthetic-av", "small_cnn", fusion, "reconboost", 0), log=quiet)
    assert metrics["status"] == "ok"
    assert all(math.isfinite(v) for v in metrics["metrics"]["best"]["test"].values())
    assert all(torch.isfinite(v.float()).all() for v in state.values()) and "fusion.boost_rate" in state
    row = metrics["history"][0]
    assert {"boost_loss_audio", "ensemble_true_prob_audio", "consolidation_audio"} <= set(row)


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(reconboost_cfg, tmp_path, monkeypatch):
    reconboost_cfg["train"]["epochs"] = 4  # boost audio, rectify, boost visual (after the checkpoint), rectify
    cfg = validate_config(reconboost_cfg)
    full, _ = resume_reproduces(
        cfg, RunSpec("synthetic-av", "small_cnn", "concat", "reconboost", 0), tmp_path, monkeypatch
    )
    assert full["status"] == "ok"
    history = full["history"]
    assert "boost_loss_audio" in history[0] and "rectify_ce" in history[1] and "boost_loss_visual" in history[2]
    assert history[3]["boost_rate"] != 1.0  # β is learned in rectification
