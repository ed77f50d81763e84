"""Where a number came from: code version, package versions, device."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PACKAGES = (
    "torch",
    "torchvision",
    "torchaudio",
    "numpy",
    "snakemake",
    "snakemake-executor-plugin-slurm",
    "ffmpeg-python",
    "imageio-ffmpeg",
    "pandas",
    "scipy",
)


def git_commit() -> str:
    """HEAD's commit, suffixed '-dirty' when tracked files differ from it; 'unknown' outside a checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "benchmark",
                "workflow",
                "Snakefile",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


def provenance(device: torch.device) -> dict:
    return {"git_commit": git_commit(), "packages": package_versions(), "device": device_description(device)}


def execution_host() -> dict:
    """Where this execution ran: host name and, under Slurm, the job (and array task) id."""
    out = {"host": platform.node()}
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        if os.environ.get(key):
            out[key.lower()] = os.environ[key]
    return out
