"""MLA on hand-computed cases: the entropy fusion weights, the OWM projector update, the alternating unimodal steps of
one batch through SGD (which parameters each step moves and by how much, the projected head gradient), the released
and BalanceBenchmark gradient variants, the joint window, what it runs on, and a harness epoch and resume."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.mla import HEAD_NOTE, MLA, SharedHead, entropy_weights, owm_update
from benchmark.config import validate_config
from benchmark.models.fusions import FUSIONS, ConcatFusion, SumFusion
from benchmark.models.model import MultimodalModel
from benchmark.models.stream_fusions import MidConcatFusion, SEGateFusion
from tests.conftest import small_batch, small_model
from tests.test_resume import quiet, resume_reproduces

LN3 = math.log(3.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def entropy(p: list[float]) -> float:
    return -sum(q * math.log(q) for q in p)


def ready(balancer: MLA, model: MultimodalModel, epoch: int = 0, num_epochs: int = 4) -> MLA:
    ctx = RunContext(modalities=list(model.modalities), num_epochs=num_epochs, device=torch.device("cpu"))
    ctx.epoch = epoch
    balancer.setup(model, ctx)
    return balancer


def linear_model(modalities=("a", "v"), dims=None, num_classes: int = 3) -> MultimodalModel:
    """Linear encoders φ_m = W_m x + b_m (3 → d_m), MLA's shared head; float64 for tight comparisons."""
    torch.manual_seed(0)
    dims = dims or {m: 2 for m in modalities}
    encoders = {m: nn.Linear(3, dims[m]) for m in modalities}
    for m, e in encoders.items():
        e.out_dim = dims[m]
    model = MultimodalModel(encoders, ConcatFusion(dims, num_classes), num_classes)
    return model


def batch(modalities=("a", "v"), n: int = 6) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {m: torch.randn(n, 3, generator=g, dtype=torch.float64) for m in modalities}, torch.arange(n) % 3


def loop_batch(balancer: MLA, model: MultimodalModel, optimizer, inputs, y) -> list[dict]:
    """One batch as ``fit`` runs it: per phase forward, loss, zero_grad, backward, after_backward, step. Returns, per
    phase, the parameters before the step, their (modified) gradients and the head's plain loss gradient."""
    record = []
    for phase in balancer.phases(balancer.ctx.epoch):
        balancer.ctx.phase = phase
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = balancer.forward(model, inputs)
        loss = balancer.loss(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        plain = model.fusion.head.weight.grad.clone()
        balancer.after_backward(out, y)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
        record.append(
            {"phase": phase, "before": before, "grads": grads, "plain": plain, "logits": out.logits, "P": balancer.P}
        )
    return record


def ce_head_gradient(head_w, head_b, phi, y):
    """∂CE/∂W for z = W φ + b: (softmax(z) − onehot)ᵀ φ / B."""
    z = phi @ head_w.T + head_b
    r = (torch.softmax(z, 1) - F.one_hot(y, z.shape[1]).to(z.dtype)) / len(y)
    return r.T @ phi, r.sum(0)


# --- the rules on numbers ------------------------------------------------------------------------------------------


def test_entropy_weights_and_the_fused_output_hand_computed():
    # sample 0: audio p = (3/4, 1/4), visual uniform (e = ln 2); sample 1: both uniform (λ = 1/2 each)
    za = t(LN3, 0.0, 0.0, 0.0).view(2, 2)
    zv = torch.zeros(2, 2, dtype=torch.float64)
    lam = entropy_weights({"audio": za, "visual": zv})
    e_a, e_v = entropy([0.75, 0.25]), math.log(2)
    lam_a = math.exp(-e_a) / (math.exp(-e_a) + math.exp(-e_v))
    torch.testing.assert_close(lam, torch.tensor([[lam_a, 0.5], [1 - lam_a, 0.5]], dtype=torch.float32))
    assert lam_a > 0.5  # the more certain modality counts more
    # the shared head on identity features: z_m = φ_m
    head = SharedHead({"audio": 2, "visual": 2}, 2).double()
    with torch.no_grad():
        head.head.weight.copy_(torch.eye(2))
        head.head.bias.zero_()
    head.eval()
    out = head({"audio": za, "visual": zv})
    torch.testing.assert_close(out[0], lam_a * za[0] + (1 - lam_a) * zv[0])
    torch.testing.assert_close(out[1], torch.zeros(2, dtype=torch.float64))
    z = head.modality_logits({"audio": za, "visual": zv})
    torch.testing.assert_close(z["audio"], za)
    torch.testing.assert_close(z["visual"], zv)
    assert head.modality_head_params("audio") == []


def test_owm_update_hand_computed_and_orthogonal_to_what_it_has_seen():
    p = torch.eye(2, dtype=torch.float64)
    p1 = owm_update(p, t(1.0, 0.0).view(1, 2), 0.1)  # k = r: I − r rᵀ/(0.1 + 1)
    torch.testing.assert_close(p1, torch.diag(t(1 - 1 / 1.1, 1.0)))
    p2 = owm_update(p1, t(0.0, 2.0).view(1, 2), 0.1)  # k = (0, 2), r·k = 4
    torch.testing.assert_close(p2, torch.diag(t(1 - 1 / 1.1, 1 - 4 / 4.1)))
    # every input seen is nearly annihilated: P r = α/(α + r P_prev rᵀ) · P_prev r
    torch.testing.assert_close(p2 @ t(0.0, 2.0), t(0.0, 2 * 0.1 / 4.1))
    normed = owm_update(p1, t(0.0, 2.0).view(1, 2), 0.1, normalize=True)
    torch.testing.assert_close(normed, p2 / p2.norm())
    assert torch.linalg.matrix_norm(normed).item() == pytest.approx(1.0)
    # a general case: the recursion is the regularised projector I − A(AᵀA... in the one-input case, symmetric
    r = t(0.3, -1.2, 0.5).view(1, 3)
    q = owm_update(torch.eye(3, dtype=torch.float64), r, 0.05)
    torch.testing.assert_close(q, torch.eye(3, dtype=torch.float64) - r.T @ r / (0.05 + (r @ r.T)))
    torch.testing.assert_close(q, q.T)


# --- one batch through the loop's phases ---------------------------------------------------------------------------


def test_one_batch_alternates_unimodal_steps_and_projects_the_second_head_gradient():
    mla = MLA()
    model = mla.configure_model(linear_model()).double()
    assert isinstance(model.fusion, SharedHead) and model.fusion.head.in_features == 2
    ready(mla, model)
    mla.batches_per_epoch = 4
    assert mla.phases(0) == ("a", "v")
    inputs, y = batch()
    lr = 0.5
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    audio, visual = loop_batch(mla, model, optimizer, inputs, y)

    # step 1 (audio, the run's first step): CE(head(φ_a)) only, the head gradient as it is, visual untouched
    b = audio["before"]
    phi_a = inputs["a"] @ b["encoders.a.weight"].T + b["encoders.a.bias"]
    gw, gb = ce_head_gradient(b["fusion.head.weight"], b["fusion.head.bias"], phi_a, y)
    torch.testing.assert_close(audio["grads"]["fusion.head.weight"], gw)
    torch.testing.assert_close(audio["grads"]["fusion.head.bias"], gb)
    assert set(audio["grads"]) == {"encoders.a.weight", "encoders.a.bias", "fusion.head.weight", "fusion.head.bias"}
    torch.testing.assert_close(audio["logits"], phi_a @ b["fusion.head.weight"].T + b["fusion.head.bias"])
    assert torch.equal(audio["P"], torch.eye(2, dtype=torch.float64))  # P untouched by the run's first step

    # step 2 (visual): the head as step 1 left it; P takes mean φ_v (α = 0.1 in batch 0), the gradient becomes G·P
    b = visual["before"]
    torch.testing.assert_close(b["fusion.head.weight"], audio["before"]["fusion.head.weight"] - lr * gw)
    phi_v = inputs["v"] @ b["encoders.v.weight"].T + b["encoders.v.bias"]
    gw_v, gb_v = ce_head_gradient(b["fusion.head.weight"], b["fusion.head.bias"], phi_v, y)
    torch.testing.assert_close(visual["plain"], gw_v)
    r = phi_v.mean(0, keepdim=True)
    p = torch.eye(2, dtype=torch.float64) - r.T @ r / (0.1 + r @ r.T)
    torch.testing.assert_close(mla.P, p)
    torch.testing.assert_close(visual["grads"]["fusion.head.weight"], gw_v @ p)
    torch.testing.assert_close(visual["grads"]["fusion.head.bias"], gb_v)  # the bias is never projected
    assert set(visual["grads"]) == {"encoders.v.weight", "encoders.v.bias", "fusion.head.weight", "fusion.head.bias"}
    after = dict(model.named_parameters())
    for name in ("encoders.a.weight", "encoders.a.bias"):  # the audio encoder does not move in the visual step
        assert torch.equal(after[name].detach(), b[name])
    # on the batch's mean visual feature the head's output moves by only α/(α + ‖r‖²) of the plain step's change
    moved = (after["fusion.head.weight"].detach() - b["fusion.head.weight"]) @ r.T
    torch.testing.assert_close(moved, -lr * gw_v @ r.T * 0.1 / (0.1 + (r @ r.T)))
    summary = mla.epoch_summary()
    assert {"loss_uni_a", "loss_uni_v", "kept_v"} == set(summary)  # step 1 was not modified: no kept_a yet
    assert 0 < summary["kept_v"] < 1
    assert mla.steps == 2 and mla.batch == 1

    # batch 2 of 4: α = 0.1 · 0.1^(1/4); the audio step now uses and extends the same P
    p_before = mla.P.clone()
    audio2, _ = loop_batch(mla, model, optimizer, inputs, y)
    b = audio2["before"]
    r_a = (inputs["a"] @ b["encoders.a.weight"].T + b["encoders.a.bias"]).mean(0, keepdim=True)
    p_after_audio = owm_update(p_before, r_a, 0.1 * 0.1**0.25)
    torch.testing.assert_close(audio2["grads"]["fusion.head.weight"], audio2["plain"] @ p_after_audio)
    mla.on_epoch_start(1)
    assert mla.batch == 0 and mla.steps == 4


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"gradient": "add", "normalize": True}, lambda g, p: g + g @ (p / p.norm())),  # BalanceBenchmark
        ({"gradient": "project", "normalize": True}, lambda g, p: g @ (p / p.norm())),  # the released plugin as written
        ({"gradient": "none"}, lambda g, p: g),  # the released code as it runs
    ],
)
def test_gradient_variants_on_the_second_step(options, expected):
    mla = MLA(**options)
    model = mla.configure_model(linear_model()).double()
    ready(mla, model)
    inputs, y = batch()
    _, visual = loop_batch(mla, model, torch.optim.SGD(model.parameters(), lr=0.5), inputs, y)
    b = visual["before"]
    r = (inputs["v"] @ b["encoders.v.weight"].T + b["encoders.v.bias"]).mean(0, keepdim=True)
    p = torch.eye(2, dtype=torch.float64) - r.T @ r / (0.1 + r @ r.T)
    torch.testing.assert_close(visual["grads"]["fusion.head.weight"], expected(visual["plain"], p))
    if options["gradient"] == "none":
        assert torch.equal(mla.P, torch.eye(2, dtype=torch.float64))
        assert any("module.weight" in n for n in mla.run_notes)
    else:
        assert any("Frobenius" in n for n in mla.run_notes)


def test_outside_the_window_one_joint_step_on_the_entropy_fused_output():
    mla = MLA(start_epoch=0, end_epoch=1)
    model = mla.configure_model(linear_model()).double()
    ready(mla, model, epoch=2)
    assert mla.phases(1) == ("a", "v") and mla.phases(2) == (None,)
    assert any("epochs [0, 1]" in n for n in mla.run_notes)
    inputs, y = batch()
    (step,) = loop_batch(mla, model, torch.optim.SGD(model.parameters(), lr=0.5), inputs, y)
    b = step["before"]
    phi = {m: inputs[m] @ b[f"encoders.{m}.weight"].T + b[f"encoders.{m}.bias"] for m in "av"}
    z = {m: f @ b["fusion.head.weight"].T + b["fusion.head.bias"] for m, f in phi.items()}
    lam = entropy_weights(z).double()
    torch.testing.assert_close(step["logits"], lam[0, :, None] * z["a"] + lam[1, :, None] * z["v"])
    assert set(step["grads"]) == {n for n, _ in model.named_parameters()}  # every encoder and the head
    torch.testing.assert_close(step["grads"]["fusion.head.weight"], step["plain"])  # no projection
    assert set(mla.epoch_summary()) == {"loss_fused"}


# --- the model ------------------------------------------------------------------------------------------------------


def test_unequal_widths_are_zero_padded_and_noted():
    mla = MLA()
    model = mla.configure_model(linear_model(dims={"a": 2, "v": 3})).double()
    assert model.fusion.head.in_features == 3 and any(n.startswith("extension:") for n in mla.run_notes)
    ready(mla, model)
    inputs, y = batch()
    model.eval()
    out = model(inputs)
    w, bias = model.fusion.head.weight, model.fusion.head.bias
    z = model.modality_logits(out)
    torch.testing.assert_close(z["a"], out.features["a"] @ w[:, :2].T + bias)
    torch.testing.assert_close(z["v"], out.features["v"] @ w.T + bias)
    assert torch.equal(model.fusion.modality_linear("a"), w[:, :2])
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loop_batch(mla, model, optimizer, inputs, y)
    assert mla.P.shape == (3, 3)


def test_three_modalities_alternate_in_order_with_one_projector():
    mods = ("a", "v", "t")
    mla = MLA()
    model = mla.configure_model(linear_model(mods)).double()
    ready(mla, model)
    inputs, y = batch(mods)
    record = loop_batch(mla, model, torch.optim.SGD(model.parameters(), lr=0.5), inputs, y)
    assert [r["phase"] for r in record] == list(mods) and mla.steps == 3 and mla.batch == 1
    p = torch.eye(2, dtype=torch.float64)
    for r in record[1:]:  # steps 2 and 3 extend the same P with their modality's mean feature
        m, b = r["phase"], r["before"]
        mean = (inputs[m] @ b[f"encoders.{m}.weight"].T + b[f"encoders.{m}.bias"]).mean(0, keepdim=True)
        p = owm_update(p, mean, 0.1)
        torch.testing.assert_close(r["grads"]["fusion.head.weight"], r["plain"] @ p)
    torch.testing.assert_close(mla.P, p)
    model.eval()
    out = model(inputs)
    lam = entropy_weights(model.modality_logits(out))
    torch.testing.assert_close(lam.sum(0), torch.ones(len(y)))


def test_on_the_small_cnn_every_diagnostic_reads_the_shared_head():
    inputs, y = small_batch()
    mla = MLA()
    model = mla.configure_model(small_model("sum"))
    ready(mla, model)
    assert not any(n.startswith("fusion.heads") for n, _ in model.named_parameters())  # the sum heads are gone
    model.eval()
    out = model(inputs)
    z = model.modality_logits(out)
    lam = entropy_weights(z)
    torch.testing.assert_close(out.logits, lam[0, :, None] * z["audio"] + lam[1, :, None] * z["visual"])


def test_what_it_runs_on_and_the_notes():
    for fusion in (ConcatFusion, SumFusion):
        assert MLA.not_applicable(fusion, 2, multi_label=False) is None
        assert MLA.notes(fusion, 2) == [HEAD_NOTE.format(name=fusion.name)]
    assert MLA.not_applicable(ConcatFusion, 3, multi_label=False) is None  # the released IEMOCAP setting
    for name in ("mid_mlp", "film", "gated", "transformer", "lmf"):
        assert "would go unused" in MLA.not_applicable(FUSIONS.get(name), 2, multi_label=False)
    assert "inside the encoders" in MLA.not_applicable(SEGateFusion, 2, multi_label=False)
    assert "does not have" in MLA.not_applicable(MidConcatFusion, 2, multi_label=False)
    assert "single-label" in MLA.not_applicable(ConcatFusion, 2, multi_label=True)
    assert "nothing to alternate" in MLA.not_applicable(ConcatFusion, 1, multi_label=False)
    assert MLA().run_notes == []
    assert MLA.presets["released"]["gradient"] == "none" and MLA.presets["balancebenchmark"]["end_epoch"] == 80
    with pytest.raises(ValueError, match="gradient"):
        MLA(gradient="orthogonal")
    with pytest.raises(ValueError, match="shared head"):
        ready(MLA(), linear_model())  # not configured by MLA


# --- the harness: one epoch, and resume ---------------------------------------------------------------------------


@pytest.fixture
def mla_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["mla"] = {"owm_alpha": 0.1, "gradient": "project", "normalize": False}
    return cfg


def test_one_epoch_with_the_harness(mla_cfg):
    from benchmark.grid import RunSpec
    from benchmark.run import execute_run

    cfg = validate_config(mla_cfg)
    metrics, state = execute_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "mla", 0), log=quiet)
    assert metrics["status"] == "ok"
    assert all(math.isfinite(v) for v in metrics["metrics"]["best"]["test"].values())
    assert "fusion.head.weight" in state and not any(k.startswith("unimodal_heads") for k in state)
    row = metrics["history"][0]
    assert {"loss_uni_audio", "loss_uni_visual", "kept_visual"} <= set(row)  # kept_audio: not in the first step
    assert HEAD_NOTE.format(name="concat") in metrics["notes"]


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(mla_cfg, tmp_path, monkeypatch):
    from benchmark.grid import RunSpec

    mla_cfg["train"]["epochs"] = 4
    cfg = validate_config(mla_cfg)
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "mla", 0)
    full, resumed = resume_reproduces(cfg, spec, tmp_path, monkeypatch)
    assert full["status"] == "ok" and resumed["status"] == "ok"
