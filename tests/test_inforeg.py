"""InfoReg (Huang et al. 2025): the prime-learning-window rate, the regulation strength, the proximal gradient on the
leading modality's encoder, the Fisher traces, the window's latch, resuming, and a run with the harness."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import yaml
from torch import nn
from torch.nn import functional as F

from benchmark.balancers.base import RunContext
from benchmark.balancers.inforeg import (
    LATCH_OFF_NOTE,
    REGULATED_FISHER_NOTE,
    InfoReg,
    inforeg_coefficients,
    window_rate,
)
from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.models.fusions import FUSIONS, ConcatFusion
from benchmark.models.model import MultimodalModel
from benchmark.params import ParamError, check_params
from benchmark.run import train_run
from tests.test_resume import quiet, resume_reproduces

MODS = ["a", "v"]
Y = torch.tensor([0, 1, 0, 1])
# audio: every row's larger entry is its label; visual: rows 0 and 1 right, 2 and 3 wrong — audio leads
XA = torch.tensor([[2.0, -1.0], [0.5, 1.5], [1.0, 0.0], [-0.5, 1.0]])
XV = torch.tensor([[1.0, 0.5], [-1.0, 0.5], [0.0, 1.5], [2.0, 0.5]])
INPUTS = {"a": XA, "v": XV}


class Linear(nn.Linear):
    """A linear encoder (out_dim as a Backbone declares), initialised to ``scale``·I with bias ``shift``."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__(2, 2)
        self.out_dim = 2
        with torch.no_grad():
            self.weight.copy_(scale * torch.eye(2))
            self.bias.fill_(shift)


def tiny_model() -> MultimodalModel:
    """φ_a = x_a, φ_v = x_v; concat head [I, ½I] with zero bias, so out_a = x_a and out_v = ½·x_v."""
    model = MultimodalModel({"a": Linear(), "v": Linear()}, ConcatFusion({m: 2 for m in MODS}, 2), 2)
    with torch.no_grad():
        model.fusion.head.weight.copy_(torch.cat([torch.eye(2), 0.5 * torch.eye(2)], 1))
        model.fusion.head.bias.zero_()
    return model


def ready(method: InfoReg, model: MultimodalModel, epochs: int = 4) -> InfoReg:
    method.setup(model, RunContext(modalities=list(model.modalities), num_epochs=epochs, device=torch.device("cpu")))
    return method


def step(method: InfoReg, model: MultimodalModel, inputs: dict = INPUTS, y: torch.Tensor = Y) -> torch.Tensor:
    """One training step of the loop up to the optimiser: forward, loss, backward, after_backward."""
    model.zero_grad(set_to_none=True)
    out = method.forward(model, inputs)
    loss = method.loss(out, y)
    loss.backward()
    method.after_backward(out, y)
    return loss


def task_grads(model: MultimodalModel, inputs: dict = INPUTS, y: torch.Tensor = Y, unimodal: bool = True):
    """The closed form of the task loss CE(fused) + Σ_m CE(W_m·φ_m + b/2), on a copy: (loss, grads by name)."""
    ref = copy.deepcopy(model)
    phi = {m: ref.encoders[m](inputs[m]) for m in MODS}
    w, b = ref.fusion.head.weight, ref.fusion.head.bias
    fused = torch.cat([phi["a"], phi["v"]], 1) @ w.T + b
    loss = F.cross_entropy(fused, y)
    if unimodal:
        loss = loss + F.cross_entropy(phi["a"] @ w[:, :2].T + b / 2, y)
        loss = loss + F.cross_entropy(phi["v"] @ w[:, 2:].T + b / 2, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in ref.named_parameters()}


def scores(model: MultimodalModel, inputs: dict = INPUTS, y: torch.Tensor = Y) -> tuple[float, float]:
    """s_m = Σ_i softmax(out_m)_i[y_i] with out_a = W_a·φ_a + b/2, out_v = W_v·φ_v + b/2, by hand."""
    with torch.no_grad():
        w, b = model.fusion.head.weight, model.fusion.head.bias
        out_a = model.encoders["a"](inputs["a"]) @ w[:, :2].T + b / 2
        out_v = model.encoders["v"](inputs["v"]) @ w[:, 2:].T + b / 2
        pick = lambda o: torch.softmax(o, 1)[torch.arange(len(y)), y].sum().item()  # noqa: E731
        return pick(out_a), pick(out_v)


def move(model: MultimodalModel) -> None:
    """What an optimiser step might do: every parameter moves by a different amount."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.add_(0.05 * (i + 1) * torch.linspace(-1.0, 1.0, p.numel()).reshape(p.shape))


# --- the rules ----------------------------------------------------------------------------------------------


def test_window_rate_hand_computed_and_the_released_zero_padded_formula():
    assert window_rate([], 2) == 1.0  # epoch 0: k = 1
    assert window_rate([4.0], 2) == 1.0  # A_now = (0 + 4)/2, A_before = (0 + 0)/2
    assert window_rate([4.0, 2.0], 2) == pytest.approx(1 / 3)  # (3 − 2) / 3
    assert window_rate([4.0, 2.0, 1.0], 2) == pytest.approx(-1.0)  # (1.5 − 3) / 1.5: the trace falls
    assert window_rate([0.0], 10) == 0.0  # no information: the released code divides by zero here
    # the released code: ten zeros then one trace per epoch; tr1 = mean of the last 10, tr2 = of the 10 before
    traces = [5.0, 7.0, 8.0, 8.5, 8.6, 8.0, 7.0, 6.5, 6.0, 5.5, 5.2, 5.0, 4.9]
    for e in range(1, len(traces) + 1):
        kept = [0.0] * 10 + traces[:e]
        tr1, tr2 = sum(kept[-10:]) / 10, sum(kept[-11:-1]) / 10
        assert window_rate(traces[:e], 10) == pytest.approx((tr1 - tr2) / tr1, abs=1e-12)
    # with the released 0.05: epoch 10 still regulates (k = (5.5 − 0) / 70.1), epoch 11 not ((5.2 − 5) / 70.3)
    rates = [window_rate(traces[:e], 10) for e in range(len(traces) + 1)]
    assert rates[10] == pytest.approx(5.5 / 70.1) and rates[11] == pytest.approx(0.2 / 70.3)
    assert [r > 0.05 for r in rates] == [True] * 11 + [False] * 3


def test_regulation_strength_hand_computed():
    alpha = torch.tensor([0.95, 0.1])
    gap = math.exp(math.tanh(0.5))
    beta = inforeg_coefficients(torch.tensor([3.0, 2.5]), alpha)
    assert beta.tolist() == pytest.approx([0.95 * gap, 0.0])  # audio leads: only audio is regulated
    beta = inforeg_coefficients(torch.tensor([2.5, 3.0]), alpha)
    assert beta.tolist() == pytest.approx([0.0, 0.1 * gap])  # the released code's 0.1 for a leading visual
    assert inforeg_coefficients(torch.tensor([2.0, 2.0]), alpha).tolist() == [0.0, 0.0]  # a tie: neither
    # batch sums: a gap of several samples saturates tanh, β → α·e
    assert inforeg_coefficients(torch.tensor([40.0, 20.0]), alpha)[0].item() == pytest.approx(0.95 * math.e)
    # three modalities: the gap to the mean of the others, [3 − 1.5, 2 − 2, 1 − 2.5]
    beta = inforeg_coefficients(torch.tensor([3.0, 2.0, 1.0]), torch.ones(3))
    assert beta.tolist() == pytest.approx([math.exp(math.tanh(1.5)), 0.0, 0.0])
    beta = inforeg_coefficients(torch.tensor([3.0, 2.9, 1.0]), torch.ones(3))  # two ahead of the rest: both
    assert beta.tolist() == pytest.approx([math.exp(math.tanh(1.05)), math.exp(math.tanh(0.9)), 0.0])


# --- at gradient level --------------------------------------------------------------------------------------


def test_loss_is_fused_plus_split_unimodal_and_the_first_step_has_no_pull():
    model = tiny_model()
    method = ready(InfoReg(alpha=0.95), model)
    method.on_epoch_start(0)
    assert method.window_open and method.rate == 1.0
    expected_loss, expected = task_grads(model)
    loss = step(method, model)
    torch.testing.assert_close(loss.detach(), expected_loss)
    for n, p in model.named_parameters():  # θ = θ̃ on the epoch's first step: the proximal gradient is 0
        torch.testing.assert_close(p.grad, expected[n], msg=n)
    s_a, s_v = scores(model)
    assert s_a > s_v
    torch.testing.assert_close(method.beta, torch.tensor([0.95 * math.exp(math.tanh(s_a - s_v)), 0.0]))
    # unimodal_loss: false keeps CE(fused) alone
    plain = ready(InfoReg(unimodal_loss=False), tiny_model())
    plain.on_epoch_start(0)
    fused_only, reference = task_grads(model, unimodal=False)
    torch.testing.assert_close(step(plain, plain.model).detach(), fused_only)
    torch.testing.assert_close(plain.model.encoders["a"].weight.grad, reference["encoders.a.weight"])


def test_the_leading_encoder_is_pulled_back_to_its_epoch_start_values_and_nothing_else_changes():
    model = tiny_model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = ready(InfoReg(alpha=0.95), model)
    method.on_epoch_start(0)
    step(method, model)
    first = method.beta[0].item()
    move(model)  # later in the epoch: the parameters have left θ̃
    s_a, s_v = scores(model)
    assert s_a > s_v
    beta = 0.95 * math.exp(math.tanh(s_a - s_v))
    _, expected = task_grads(model)
    step(method, model)
    for n, p in model.named_parameters():
        if n.startswith("encoders.a."):  # every audio encoder parameter, the bias too: g + β·(θ − θ̃)
            want = expected[n] + beta * (p.detach() - start[n])
        else:  # the lagging encoder and the fused head: the task gradient only
            want = expected[n]
        torch.testing.assert_close(p.grad, want, msg=n)
    summary = method.epoch_summary()
    assert summary["beta_a"] == pytest.approx((first + beta) / 2, rel=1e-6) and summary["beta_v"] == 0.0


def test_per_modality_alpha_regulates_a_leading_visual_with_its_own_coefficient():
    model = tiny_model()
    with torch.no_grad():  # swap the blocks: out_a = ½·x_a, out_v = x_v, and give visual the right answers
        model.fusion.head.weight.copy_(torch.cat([0.5 * torch.eye(2), torch.eye(2)], 1))
    inputs = {"a": XV, "v": XA}
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = ready(InfoReg(alpha={"a": 0.95, "v": 0.1}), model)
    method.on_epoch_start(0)
    step(method, model, inputs)
    move(model)
    s_a, s_v = scores(model, inputs)
    assert s_v > s_a
    _, expected = task_grads(model, inputs)
    step(method, model, inputs)
    beta = 0.1 * math.exp(math.tanh(s_v - s_a))
    torch.testing.assert_close(method.beta, torch.tensor([0.0, beta]))
    w = model.encoders["v"].weight
    torch.testing.assert_close(w.grad, expected["encoders.v.weight"] + beta * (w.detach() - start["encoders.v.weight"]))
    torch.testing.assert_close(model.encoders["a"].weight.grad, expected["encoders.a.weight"])


@pytest.mark.parametrize("fisher", ["task", "regulated"])
def test_fisher_trace_sums_the_epochs_squared_gradients_per_layer_mean(fisher):
    model = tiny_model()
    method = ready(InfoReg(alpha=0.95, fisher=fisher), model)
    assert method.run_notes == ([REGULATED_FISHER_NOTE] if fisher == "regulated" else [])
    method.on_epoch_start(0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = {"a": 0.0, "v": 0.0}
    for i in range(3):
        if i:
            move(model)
        s_a, s_v = scores(model)
        lead = 0.95 * math.exp(math.tanh(abs(s_a - s_v)))
        beta = {"a": lead if s_a > s_v else 0.0, "v": lead if s_v > s_a else 0.0}
        _, grads = task_grads(model)
        for m in MODS:  # the only layer with ≥ 2 dimensions is the 2×2 weight (the bias is not in the trace)
            g = grads[f"encoders.{m}.weight"]
            if fisher == "regulated":
                pull = model.encoders[m].weight.detach() - start[f"encoders.{m}.weight"]
                g = g + beta[m] * pull
            expected[m] += g.square().mean().item()
        step(method, model)
    method.on_epoch_end(0, {})
    assert method.traces["a"] == pytest.approx([expected["a"]], rel=1e-6)
    assert method.traces["v"] == pytest.approx([expected["v"]], rel=1e-6)
    summary = method.epoch_summary()
    assert summary["fisher_trace_a"] == pytest.approx(expected["a"], rel=1e-6)
    assert summary["window"] == 1.0 and summary["window_rate"] == 1.0
    assert method.anchor == {}  # released at the end of its epoch


def test_the_window_closes_when_the_trace_stops_growing_and_stays_closed_with_latch():
    def at_epoch(method: InfoReg, traces: dict, epoch: int) -> InfoReg:
        method.traces = {m: list(t) for m, t in traces.items()}
        method.on_epoch_start(epoch)
        return method

    model = tiny_model()
    latched = ready(InfoReg(history=1), model)
    # history 1: k = (T_now − T_before) / T_now of the summed encoder traces [3, 3]: 0, the window closes
    at_epoch(latched, {"a": [2.0, 2.0], "v": [1.0, 1.0]}, 2)
    assert latched.rate == 0.0 and not latched.window_open and latched.anchor == {}
    move(model)
    _, expected = task_grads(model)
    step(latched, model)
    assert latched.beta.tolist() == [0.0, 0.0]
    for n, p in model.named_parameters():  # outside the window: the task gradient, nothing pulled
        torch.testing.assert_close(p.grad, expected[n], msg=n)
    # the sum grows again (3 → 6, k = 0.5): with latch the window stays closed, without it re-opens
    at_epoch(latched, {"a": [2.0, 2.0, 4.0], "v": [1.0, 1.0, 2.0]}, 3)
    assert latched.rate == 0.5 and not latched.window_open
    reopening = ready(InfoReg(history=1, latch=False), tiny_model())
    assert reopening.run_notes == [LATCH_OFF_NOTE]
    at_epoch(reopening, {"a": [2.0, 2.0], "v": [1.0, 1.0]}, 2)
    assert not reopening.window_open
    at_epoch(reopening, {"a": [2.0, 2.0, 4.0], "v": [1.0, 1.0, 2.0]}, 3)
    assert reopening.window_open and len(reopening.anchor["a"]) == 2
    # window_trace: one modality's trace (the released code reads audio's): audio still grows, the sum falls
    one = ready(InfoReg(history=1, window_trace="a"), tiny_model())
    at_epoch(one, {"a": [1.0, 2.0], "v": [5.0, 1.0]}, 2)
    assert one.rate == 0.5 and one.window_open
    both = ready(InfoReg(history=1), tiny_model())
    at_epoch(both, {"a": [1.0, 2.0], "v": [5.0, 1.0]}, 2)
    assert both.rate == -1.0 and not both.window_open
    # a share of the schedule: "50%" of 4 epochs is 2
    assert ready(InfoReg(history="50%"), tiny_model(), epochs=4).history_epochs == 2


def test_state_dict_in_the_middle_of_an_epoch_resumes_to_the_same_gradients_and_traces():
    model = tiny_model()
    method = ready(InfoReg(alpha=0.95), model)
    method.on_epoch_start(0)
    step(method, model)
    move(model)
    state = method.state_dict()
    assert {"anchor", "fisher_sum", "traces", "window_open", "rate"} <= set(state)
    assert "params" not in state and "fisher_params" not in state  # references into the model are rebuilt
    twin = copy.deepcopy(model)
    resumed = ready(InfoReg(alpha=0.95), twin)
    resumed.load_state_dict(state, torch.device("cpu"))
    step(method, model)
    step(resumed, twin)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)
    method.on_epoch_end(0, {})
    resumed.on_epoch_end(0, {})
    assert method.traces == resumed.traces


# --- declarations --------------------------------------------------------------------------------------------


def test_parameters_presets_and_what_it_cannot_run():
    check_params(InfoReg, {k: v for k, v in InfoReg.presets["released"].items() if k != "source"})
    check_params(InfoReg, {"history": "20%", "alpha": 0.5, "window_trace": "audio", "latch": False})
    for bad in ({"fisher": "hessian"}, {"history": 0}, {"alpha": 0.0}, {"threshold": -0.1}, {"history": "ten"}):
        with pytest.raises(ParamError):
            check_params(InfoReg, bad)
    with pytest.raises(ValueError, match="window_trace"):
        ready(InfoReg(window_trace="audio"), tiny_model())  # the tiny model's modalities are a and v
    with pytest.raises(ValueError, match="alpha has no value"):
        ready(InfoReg(alpha={"a": 1.0}), tiny_model())
    assert "single-label" in InfoReg.not_applicable(ConcatFusion, 2, True)
    assert InfoReg.not_applicable(ConcatFusion, 3, False) is None
    assert "merge inside the encoders" in InfoReg.not_applicable(FUSIONS.get("mid_concat"), 2, False)
    assert InfoReg.notes(ConcatFusion, 2) == []
    assert any(n.startswith("extension:") and "mean of the others" in n for n in InfoReg.notes(ConcatFusion, 3))
    assert any("Shapley" in n or "estimate" in n for n in InfoReg.notes(FUSIONS.get("gated"), 2))


# --- with the harness ----------------------------------------------------------------------------------------


@pytest.fixture
def inforeg_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["inforeg"] = {"alpha": 0.95, "threshold": 0.05, "history": 1, "latch": True}
    return cfg


def test_resuming_from_the_epoch_2_checkpoint_reproduces_the_uninterrupted_run(inforeg_cfg, tmp_path, monkeypatch):
    inforeg_cfg["train"]["epochs"] = 4
    cfg = validate_config(inforeg_cfg)
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "inforeg", 0)
    full, _ = resume_reproduces(cfg, spec, tmp_path, monkeypatch)
    history = full["history"]
    # history 1: the summed trace falls after epoch 1, so the window closes in epoch 2, right after the checkpoint
    assert [row["window"] for row in history] == [1.0, 1.0, 0.0, 0.0]
    assert all(row["fisher_trace_audio"] > 0 for row in history) and history[-1]["beta_audio"] == 0.0


def test_one_epoch_with_the_harness_finishes_ok(inforeg_cfg, tmp_path):
    cfg = validate_config(inforeg_cfg)
    metrics = train_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", "inforeg", 0), tmp_path / "run", log=quiet)
    assert metrics["status"] == "ok" and len(metrics["history"]) == 1
    row = metrics["history"][0]
    keys = {
        "window",
        "window_rate",
        "beta_audio",
        "beta_visual",
        "score_audio",
        "fisher_trace_visual",
        "loss_uni_audio",
    }
    assert keys <= set(row)
    assert json.loads((tmp_path / "run/metrics.json").read_text())["status"] == "ok"
