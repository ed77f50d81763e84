"""The loop's hooks for methods that change the schedule: phases (alternating steps), epoch rows (re-sampling)
and forgetting optimizer state after a reset (benchmark/balancers/base.py)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from benchmark.balancers.base import Balancer, forget_optimizer_state, fused_ce
from benchmark.config import validate_config
from benchmark.data.cache import EpochRows
from benchmark.grid import RunSpec
from benchmark.run import train_run
from tests.test_resume import quiet, resume_reproduces

#: what the test balancers saw, per instance of a run (reset by each test)
SEEN: dict[str, list] = {}


class Alternating(Balancer):
    """Two phases per batch: each trains one modality's encoder (the other's features detached)."""

    name = "alternating"

    def phases(self, epoch: int) -> tuple:
        return tuple(self.model.modalities)

    def forward(self, model, inputs):
        features = model.encode(inputs)
        features = {m: f if m == self.ctx.phase else f.detach() for m, f in features.items()}
        return model.decode(features)

    def loss(self, out, y):
        loss = fused_ce(out, y)
        SEEN.setdefault("losses", []).append((self.ctx.phase, loss.item(), len(y)))
        return loss

    def after_backward(self, out, y) -> None:
        with_grad = {
            m for m in self.model.modalities if any(p.grad is not None for p in self.model.encoders[m].parameters())
        }
        SEEN.setdefault("grads", []).append((self.ctx.phase, with_grad))


class Resampling(Balancer):
    """Epoch e trains on rows 0..9 twice plus every (e+2)-th row; records each batch's positions."""

    name = "resampling"

    def epoch_rows(self, epoch: int):
        n = len(self.ctx.train)
        rows = torch.cat([torch.arange(10), torch.arange(10), torch.arange(0, n, epoch + 2)])
        SEEN.setdefault("rows", []).append(rows)
        return rows

    def loss(self, out, y):
        SEEN.setdefault("positions", []).append(self.ctx.positions.clone())
        assert torch.equal(SEEN["rows"][-1][self.ctx.draws], self.ctx.positions)  # draws index the epoch's rows
        # the positions name the batch's samples: their labels are the split's labels at those positions
        torch.testing.assert_close(self.ctx.train.targets()[self.ctx.positions].to(y.device), y)
        return fused_ce(out, y)


@pytest.fixture
def hooks_cfg(in_tiny_workspace) -> dict:
    SEEN.clear()
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["balancers"]["alternating"] = {"class": "tests.test_schedule_hooks:Alternating"}
    cfg["balancers"]["resampling"] = {"class": "tests.test_schedule_hooks:Resampling"}
    cfg["train"]["epochs"] = 2
    return cfg


def test_each_phase_is_one_step_with_its_own_gradients_and_the_epoch_loss_is_their_mean(hooks_cfg, tmp_path):
    m = train_run(
        validate_config(hooks_cfg), RunSpec("synthetic-av", "small_cnn", "concat", "alternating", 0), tmp_path
    )
    assert m["status"] == "ok"
    grads = SEEN["grads"]
    assert [phase for phase, _ in grads[:4]] == ["audio", "visual", "audio", "visual"]
    assert all(with_grad == {phase} for phase, with_grad in grads)  # the other encoder gets no gradient, no step
    batches = len(grads) // 2 // 2  # two phases, two epochs
    first = SEEN["losses"][: 2 * batches]
    mean = sum(loss * n for _, loss, n in first) / 2 / sum(n for _, _, n in first[::2])
    assert math.isclose(m["history"][0]["train_loss"], mean, rel_tol=1e-5)


def test_epoch_rows_are_what_the_epoch_draws_and_batches_carry_their_positions(hooks_cfg, tmp_path):
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "resampling", 0)
    m = train_run(validate_config(hooks_cfg), spec, tmp_path, log=quiet)
    assert m["status"] == "ok"
    rows, positions = SEEN["rows"], SEEN["positions"]
    per_epoch = [len(r) for r in rows]
    drawn = torch.cat(positions)
    first, second = drawn[: per_epoch[0]], drawn[per_epoch[0] :]
    assert torch.equal(first.sort().values, rows[0].sort().values)  # repeats kept, nothing dropped
    assert torch.equal(second.sort().values, rows[1].sort().values)
    assert not torch.equal(first, rows[0])  # shuffled


def test_a_resampled_run_resumes_to_the_same_numbers(hooks_cfg, tmp_path, monkeypatch):
    hooks_cfg["train"]["epochs"] = 4
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "resampling", 0)
    resume_reproduces(validate_config(hooks_cfg), spec, tmp_path, monkeypatch)


def test_epoch_rows_outside_the_split_are_refused():
    class Split:
        multi_label = False

        def __len__(self):
            return 5

    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        EpochRows(Split(), torch.tensor([0, 5]))


def test_forget_optimizer_state_drops_the_momentum_of_reset_parameters_only():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([a, b], lr=0.1, momentum=0.9)
    (a.sum() + b.sum()).backward()
    opt.step()
    assert a in opt.state and b in opt.state
    forget_optimizer_state(opt, [a])
    assert a not in opt.state and b in opt.state
    with torch.no_grad():
        a.copy_(torch.ones(2))
    opt.step()  # a restarts: plain SGD step without the earlier momentum
    torch.testing.assert_close(a.detach(), torch.full((2,), 0.9))
