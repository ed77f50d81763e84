"""Per-epoch training checkpoints, so a killed or preempted job resumes where it stopped.

A checkpoint holds everything the next epoch depends on: model, optimizer, scheduler, the method's running state,
the shuffling generator and every RNG (torch CPU and CUDA, NumPy, Python), plus what the loop has recorded so far
(history, best-validation weights). It is written to a temporary file and renamed, so a kill during the write
leaves the previous checkpoint intact. A checkpoint is used only by a run with the same settings hash.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


def rng_state(loader_generator: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
             "loader": loader_generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict) -> None:
    """Write-then-rename: the file at ``path`` is always a complete checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | None, settings_hash: str, log=print) -> dict | None:
    """The checkpoint at ``path`` if it belongs to a run with these settings, else None (a stale one is ignored)."""
    if path is None or not Path(path).exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("settings_hash") != settings_hash:
        log(f"ignoring checkpoint {path}: it belongs to other settings ({state.get('settings_hash')} != {settings_hash})")
        return None
    return state
