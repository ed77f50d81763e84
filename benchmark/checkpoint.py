"""Per-epoch training checkpoints, so a killed or preempted job resumes where it stopped.

A checkpoint holds everything the next epoch depends on: model, optimizer, scheduler, the method's running state,
the shuffling generator and every RNG (torch CPU and CUDA, NumPy, Python), plus what the loop has recorded so far
(history, best-validation weights). It is written to a temporary file and renamed, so a kill during the write
leaves the previous checkpoint intact. A checkpoint is used only by a run with the same settings hash.

A checkpoint is read with ``torch.load(weights_only=True)``: a file copied from elsewhere cannot run code when it is
loaded, because nothing but tensors and plain containers (dicts, lists, tuples, numbers, strings) is unpickled. So
the state is stored as plain data: the NumPy RNG state as a dict holding a tensor, and a top-level dataclass of this
package (the loop's ``FitResult``) as a tagged dict of its attributes, rebuilt on load. ``save_checkpoint`` checks
the file it wrote and refuses state that a weights-only load would reject, so a run never leaves a checkpoint it
cannot resume from.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import sys
from pathlib import Path

import numpy as np
import torch

#: the key of the dict that stands for a dataclass instance in a saved checkpoint
_DATACLASS_TAG = "__dataclass__"
#: only dataclasses defined in this package are rebuilt on load
_PACKAGE = "benchmark."


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint file holds objects that a weights-only load refuses (so loading it fully could run code)."""


def rng_state(loader_generator: torch.Generator) -> dict:
    """Every RNG stream as tensors and plain Python values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),  # (version, tuple of ints, None): plain
        "loader": loader_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict, loader_generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["bit_generator"],
            n["keys"].numpy().astype(np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    random.setstate(state["python"])
    loader_generator.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _encode(value):
    """A dataclass instance of this package as a tagged dict of its attributes (as pickle would store them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if cls.__module__.startswith(_PACKAGE):
            return {_DATACLASS_TAG: f"{cls.__module__}:{cls.__qualname__}", "fields": dict(vars(value))}
    return value


def _decode(value, path: Path):
    if not (isinstance(value, dict) and set(value) == {_DATACLASS_TAG, "fields"}):
        return value
    module, _, qualname = str(value[_DATACLASS_TAG]).partition(":")
    # looked up among modules already imported, never imported here: loading a file must not run module code
    cls = sys.modules.get(module) if module.startswith(_PACKAGE) else None
    for part in qualname.split(".") if cls is not None else []:
        cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or not isinstance(value["fields"], dict):
        raise UnsafeCheckpointError(
            f"{path} is not a usable checkpoint: it names '{value[_DATACLASS_TAG]}', "
            "which is not a dataclass of this package"
        )
    obj = cls.__new__(cls)
    obj.__dict__.update(value["fields"])
    return obj


def save_checkpoint(path: Path, state: dict) -> None:
    """Write-then-rename: the file at ``path`` is always a complete checkpoint that ``load_checkpoint`` accepts."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: _encode(v) for k, v in state.items()}, tmp)
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(tmp)  # reads the pickle only, not the tensors
    if unsafe:
        tmp.unlink()
        raise TypeError(
            f"checkpoint {path} not written: its state holds objects that a weights-only load refuses "
            f"({', '.join(sorted(unsafe))}); store tensors, numbers, strings, lists, tuples and dicts"
        )
    tmp.replace(path)


def load_checkpoint(path: Path | None, settings_hash: str, log=print) -> dict | None:
    """The checkpoint at ``path`` if it belongs to a run with these settings, else None (a stale one is ignored).

    Raises ``UnsafeCheckpointError`` for a file that holds anything but tensors and plain containers: it is not
    unpickled, so whatever code it would run does not run."""
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            found = ", ".join(sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))) or "unknown"
        except Exception:  # noqa: BLE001 - only for the message
            found = "unknown"
        raise UnsafeCheckpointError(
            f"{path} is not a safe checkpoint: it holds objects other than tensors and plain containers "
            f"(globals: {found}), which could run code when loaded, so it was not loaded. Delete it to train from "
            "scratch (checkpoints written before checkpoints became weights-only are refused too)."
        ) from e
    if not isinstance(state, dict):
        raise UnsafeCheckpointError(f"{path} is not a checkpoint: it holds a {type(state).__name__}, not a dict")
    if state.get("settings_hash") != settings_hash:
        log(
            f"ignoring checkpoint {path}: it belongs to other settings ({state.get('settings_hash')} != "
            f"{settings_hash})"
        )
        return None
    return {k: _decode(v, path) for k, v in state.items()}
