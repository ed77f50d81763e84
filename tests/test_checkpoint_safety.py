"""Checkpoints load with ``weights_only=True``: every RNG stream survives, and a file that would run code is refused."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.checkpoint import UnsafeCheckpointError, load_checkpoint, restore_rng, rng_state, save_checkpoint
from benchmark.train import FitResult


def _write_marker(path: str) -> None:
    """What the malicious pickle calls: proof that loading ran code."""
    Path(path).write_text("code ran during unpickling")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return _write_marker, (self.marker,)


def _draws(generator: torch.Generator) -> dict:
    return {
        "torch": torch.rand(5),
        "loader": torch.randperm(20, generator=generator),
        "numpy": np.random.rand(5),
        "numpy_normal": np.random.standard_normal(3),
        "python": [random.random() for _ in range(5)],
    }


def _training_state(generator: torch.Generator):
    torch.manual_seed(1)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model(torch.randn(8, 4)).square().mean().backward()
    optimizer.step()
    scheduler.step()
    np.random.seed(3)
    random.seed(4)
    np.random.standard_normal()  # an odd number of normals: NumPy's state caches the second one (has_gauss = 1)
    generator.manual_seed(5)
    torch.randperm(7, generator=generator)
    history = [
        {"epoch": 0, "lr": 0.1, "train_loss": 1.25, "train_acc": 0.5, "val_accuracy": 0.4},
        {"epoch": 1, "lr": 0.05, "train_loss": 0.75, "train_acc": 0.625, "val_accuracy": 0.45, "ogr": float("nan")},
    ]
    result = FitResult(
        history=history,
        seconds_per_epoch=[0.5, 0.25],
        best_epoch=1,
        best_state={k: v.detach().clone() for k, v in model.state_dict().items()},
        initial={"train_eval_loss": 1.5, "val_loss": 1.6},
    )
    state = {
        "settings_hash": "abc123",
        "epoch": 1,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "balancer": {"coef": torch.tensor([0.5, 0.25]), "steps": 3, "note": None},
        "rng": rng_state(generator),
        "result": result,
        "history": history,
        "best_acc": 0.45,
    }
    return model, optimizer, scheduler, state


def test_a_realistic_checkpoint_loads_weights_only_and_restores_every_rng_stream(tmp_path):
    generator = torch.Generator()
    model, optimizer, scheduler, state = _training_state(generator)
    assert state["rng"]["numpy"]["has_gauss"] == 1
    path = tmp_path / "run/checkpoint.pt"
    save_checkpoint(path, state)
    expected = _draws(generator)  # what the next epoch would draw had the job not been stopped
    assert not (tmp_path / "run/checkpoint.pt.tmp").exists()

    torch.load(path, weights_only=True)  # the file itself is weights-only loadable, not only through our wrapper
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []

    # a fresh process state: other seeds, other draws
    torch.manual_seed(99), np.random.seed(99), random.seed(99), generator.manual_seed(99)
    _draws(generator)
    saved = load_checkpoint(path, "abc123", log=pytest.fail)
    assert saved is not None and saved["epoch"] == 1 and saved["best_acc"] == 0.45
    restore_rng(saved["rng"], generator)
    got = _draws(generator)
    for key in ("torch", "loader"):
        assert torch.equal(got[key], expected[key]), key
    np.testing.assert_array_equal(got["numpy"], expected["numpy"])
    np.testing.assert_array_equal(got["numpy_normal"], expected["numpy_normal"])
    assert got["python"] == expected["python"]

    torch.manual_seed(7)
    model2 = torch.nn.Linear(4, 3)
    optimizer2 = torch.optim.SGD(model2.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    scheduler2 = torch.optim.lr_scheduler.StepLR(optimizer2, step_size=1, gamma=0.5)
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    scheduler2.load_state_dict(saved["scheduler"])
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
        assert torch.equal(optimizer.state[a]["momentum_buffer"], optimizer2.state[b]["momentum_buffer"])
    assert optimizer2.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 0.05
    assert scheduler2.state_dict() == scheduler.state_dict()
    assert torch.equal(saved["balancer"]["coef"], torch.tensor([0.5, 0.25])) and saved["balancer"]["steps"] == 3

    result = saved["result"]
    assert type(result) is FitResult
    assert result.history[:1] == state["result"].history[:1] and result.history[1]["ogr"] != result.history[1]["ogr"]
    assert result.seconds_per_epoch == [0.5, 0.25] and result.best_epoch == 1 and result.resumed_after is None
    assert result.initial == {"train_eval_loss": 1.5, "val_loss": 1.6}
    assert all(torch.equal(result.best_state[k], v) for k, v in model.state_dict().items())
    assert saved["history"][0] == state["history"][0]


def test_a_file_that_would_run_code_is_refused_and_the_code_does_not_run(tmp_path):
    # the payload is real: an unrestricted load runs it
    armed = tmp_path / "armed.pt"
    torch.save({"settings_hash": "abc123", "epoch": 0, "payload": _Payload(tmp_path / "proof")}, armed)
    torch.load(armed, weights_only=False)
    assert (tmp_path / "proof").exists()

    marker = tmp_path / "marker"
    path = tmp_path / "run/checkpoint.pt"
    path.parent.mkdir()
    torch.save({"settings_hash": "abc123", "epoch": 0, "payload": _Payload(marker)}, path)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_checkpoint(path, "abc123", log=pytest.fail)
    message = str(info.value)
    assert "not a safe checkpoint" in message and str(path) in message and "_write_marker" in message
    assert not marker.exists()
    # refused before its settings hash is even looked at
    with pytest.raises(UnsafeCheckpointError):
        load_checkpoint(path, "other", log=pytest.fail)
    assert not marker.exists()


def test_a_checkpoint_of_other_settings_is_ignored(tmp_path):
    generator = torch.Generator()
    *_, state = _training_state(generator)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, state)
    lines: list[str] = []
    assert load_checkpoint(path, "another-hash", log=lines.append) is None
    assert len(lines) == 1 and "ignoring checkpoint" in lines[0] and "abc123 != another-hash" in lines[0]
    assert load_checkpoint(tmp_path / "missing.pt", "abc123", log=pytest.fail) is None
    assert load_checkpoint(None, "abc123", log=pytest.fail) is None


def test_state_a_weights_only_load_would_refuse_is_not_written_and_the_previous_checkpoint_stays(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"settings_hash": "abc123", "epoch": 0})
    with pytest.raises(TypeError, match="weights-only load refuses"):
        save_checkpoint(path, {"settings_hash": "abc123", "epoch": 1, "rng": np.random.get_state()})
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    assert load_checkpoint(path, "abc123", log=pytest.fail)["epoch"] == 0


def test_a_tag_naming_something_other_than_a_dataclass_of_the_package_is_refused(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"settings_hash": "abc123", "result": {"__dataclass__": "os:system", "fields": {}}}, path)
    with pytest.raises(UnsafeCheckpointError, match="not a dataclass of this package"):
        load_checkpoint(path, "abc123", log=pytest.fail)


@pytest.mark.parametrize("method", ["ogm_ge", "gblend_online", "pmr"])
def test_every_checkpoint_the_training_loop_writes_loads_weights_only(in_tiny_workspace, tmp_path, monkeypatch, method):
    """The real loop's state (FitResult, a method's running state, optimizer, scheduler, RNGs) passes the safe load."""
    import yaml

    import benchmark.train as train_module
    from benchmark.config import validate_config
    from benchmark.grid import RunSpec
    from benchmark.run import train_run

    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 2
    cfg["balancers"]["gblend_online"].update(first_super_epoch=1, super_epoch=1)
    cfg = validate_config(cfg)
    original, loaded = train_module.save_checkpoint, []

    def save_then_load(path, state):
        original(path, state)
        back = load_checkpoint(path, state["settings_hash"], log=pytest.fail)
        assert type(back["result"]) is FitResult and back["result"].history == state["result"].history
        assert back["epoch"] == state["epoch"] and set(back["balancer"]) == set(state["balancer"])
        loaded.append(back["epoch"])

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_load)
    train_run(cfg, RunSpec("synthetic-av", "small_cnn", "concat", method, 0), tmp_path / "run", log=lambda _: None)
    assert loaded == [0, 1]
