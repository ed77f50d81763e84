"""`pip install .` (not editable) gives a package that runs every step and the DAG from any folder: the schema,
rules, Snakefile and default config ship inside it, and a console script runs every step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_an_installed_wheel_runs_check_and_the_dag_outside_the_checkout(tmp_path):
    wheels, target, work = tmp_path / "wheels", tmp_path / "site", tmp_path / "work"
    work.mkdir()
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(wheels.glob("mm_balance_bench-*.whl"))
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "benchmark/_bundle/workflow/schemas/config.schema.yaml").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}  # the installed copy first, not the checkout

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(cmd), capture_output=True, text=True, cwd=work, env=env)

    where = run(
        sys.executable, "-c", "import benchmark, benchmark.resources as r; print(benchmark.__file__); print(r.root())"
    )
    assert where.stdout.splitlines() == [str(target / "benchmark/__init__.py"), str(target / "benchmark/_bundle")]
    check = run(str(target / "bin/mmbench"), "check", "--set", "train.epochs=2")
    assert check.returncode == 0, check.stderr
    assert "packaged config.yaml: valid; experiment 'default'; 30 training runs" in check.stdout
    dry = run(sys.executable, "-m", "benchmark", "run", "-n", "--full", "--set", "train.epochs=2")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "train" in dry.stdout and "results/runs/synthetic-av/main/small_cnn/concat/ogm_ge/seed0-" in dry.stdout
    assert not (work / "results").exists()  # a dry run writes nothing
