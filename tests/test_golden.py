"""The numerics guard: a tiny golden grid is re-trained and its per-epoch losses compared with the ones committed for
it (tests/golden/losses.json), together with ``NUMERICS_VERSION``. A change that alters existing runs' numbers must
bump the version (which changes every identity, so old results are never mistaken for new ones) and re-record the
golden losses: ``GOLDEN_UPDATE=1 bash test.sh tests/test_golden.py``.

The comparison is relative, at ``RTOL``: the same code gives slightly different floats on another machine (measured:
epoch-1 training loss 1.9259531 in a committed run, 1.9259559 re-run on another machine at the same commit, a
relative difference of 1.5e-6), which passes; a real numeric change does not (the test shows that a learning rate
1% higher is caught).
"""

from __future__ import annotations

import json
import os

import pytest
import yaml

from benchmark.config import validate_config
from benchmark.grid import RunSpec
from benchmark.run import train_run
from benchmark.settings import NUMERICS_VERSION
from tests.conftest import REPO

GOLDEN = REPO / "tests/golden/losses.json"
RTOL = 1e-5
METHODS = ("joint", "ogm_ge", "mlb", "gblend_online")
KEYS = ("train_loss", "val_loss")


def golden_losses(cfg: dict, tmp_path) -> dict[str, list[list[float]]]:
    out = {}
    for method in METHODS:
        m = train_run(
            cfg, RunSpec("synthetic-av", "small_cnn", "concat", method, 0), tmp_path / method, log=lambda s: None
        )
        assert m["status"] == "ok", m.get("reason")
        out[method] = [[row[k] for k in KEYS] for row in m["history"]]
    return out


def differences(a: dict, b: dict) -> list[str]:
    """Where two loss records differ by more than RTOL (relative)."""
    out = []
    for method in METHODS:
        for epoch, (x, y) in enumerate(zip(a[method], b[method], strict=True)):
            for key, u, v in zip(KEYS, x, y):
                if abs(u - v) > RTOL * max(abs(u), abs(v)):
                    out.append(
                        f"{method} epoch {epoch} {key}: {u!r} vs {v!r} (relative "
                        f"{abs(u - v) / max(abs(u), abs(v)):.1e})"
                    )
    return out


@pytest.fixture
def golden_cfg(in_tiny_workspace) -> dict:
    cfg = yaml.safe_load((in_tiny_workspace / "config.yaml").read_text())
    cfg["train"]["epochs"] = 3
    cfg["balancers"]["gblend_online"].update(first_super_epoch=1, super_epoch=1)
    return validate_config(cfg)


def test_golden_grid_reproduces_its_committed_losses(golden_cfg, tmp_path):
    losses = golden_losses(golden_cfg, tmp_path)
    if os.environ.get("GOLDEN_UPDATE"):
        GOLDEN.write_text(
            json.dumps(
                {"numerics_version": NUMERICS_VERSION, "rtol": RTOL, "keys": list(KEYS), "losses": losses}, indent=1
            )
            + "\n"
        )
    golden = json.loads(GOLDEN.read_text())
    assert golden["numerics_version"] == NUMERICS_VERSION, (
        "NUMERICS_VERSION was bumped: re-record the golden losses (GOLDEN_UPDATE=1 bash test.sh tests/test_golden.py)"
    )
    diff = differences(golden["losses"], losses)
    assert not diff, (
        "the numbers of existing runs changed without a NUMERICS_VERSION bump (benchmark/settings.py): "
        + "; ".join(diff[:5])
    )


def test_the_tolerance_passes_float_noise_and_catches_a_real_change(golden_cfg, tmp_path):
    golden = json.loads(GOLDEN.read_text())["losses"]
    noisy = {
        m: [[v * (1 + 1.5e-6) for v in row] for row in rows] for m, rows in golden.items()
    }  # the measured machine noise
    assert differences(golden, noisy) == []
    changed = json.loads(json.dumps(golden_cfg))
    changed["train"]["optimizer"]["lr"] *= 1.01
    assert differences(golden, golden_losses(validate_config(changed), tmp_path))
