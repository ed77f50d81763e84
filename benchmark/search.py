"""Tuning's random search: each group's search space and the seeded draw of every trial.

A group is the runs that differ only in their seed (one dataset × fold × backbone × fusion × method). Trial k of a
group draws its hyperparameters from the group's space with a generator seeded by (``tuning.seed``, the group, k),
so the same config always draws the same trials.
"""

from __future__ import annotations

import itertools
import math
import zlib

import numpy as np

from benchmark.grid import NO_FUSION, RunSpec, modality_encoders

#: the sections of a run's settings a hyperparameter can live in, and the config axis of each
SECTIONS = {"train": None, "balancer": "balancers", "fusion": "fusions", "backbone": "backbones"}


def group_key(spec: RunSpec) -> str:
    """The group's name, which seeds its draws (the tuning folder's path before paths carried identities)."""
    return f"results/tuning/{spec.dataset}/{spec.fold}/{spec.backbone}/{spec.fusion}/{spec.method}"


def group_space(cfg: dict, spec: RunSpec) -> dict[str, dict]:
    """'<section>.<parameter>' -> distribution, for this group: shared training settings and the group's method,
    fusion and backbone entries."""
    space = cfg["tuning"]["space"]
    out = {f"train.{k}": v for k, v in (space.get("train") or {}).items()}
    names = {
        "balancer": spec.balancer,
        "fusion": None if spec.fusion == NO_FUSION else spec.fusion,
        "backbone": spec.backbone,
    }
    for section, axis in SECTIONS.items():
        if axis and names[section]:
            out.update({f"{section}.{k}": v for k, v in ((space.get(axis) or {}).get(names[section]) or {}).items()})
    # the encoders a modality gets instead of the backbone (benchmark.grid.modality_encoders) are searched too
    subset = spec.modality.split("+") if spec.modality else None
    for m, encoder in modality_encoders(cfg, spec.dataset, spec.backbone, subset).items():
        out.update({f"encoder.{m}.{k}": v for k, v in ((space.get("backbones") or {}).get(encoder) or {}).items()})
    return dict(sorted(out.items()))


def sample(dist: dict, rng: np.random.Generator):
    """One draw: a choice, or a value in [low, high] uniform on a linear or log scale (rounded for type: int)."""
    if "choices" in dist:
        return dist["choices"][int(rng.integers(len(dist["choices"])))]
    lo, hi = dist["low"], dist["high"]
    value = math.exp(rng.uniform(math.log(lo), math.log(hi))) if dist.get("scale") == "log" else rng.uniform(lo, hi)
    return int(round(value)) if dist.get("type") == "int" else float(value)


def trial_params(cfg: dict, spec: RunSpec, trial: int) -> dict:
    """The hyperparameters of one trial: random search, seeded by the tuning seed, the group and the trial; or,
    with ``tuning.strategy: grid``, the trial-th combination of the space's choices (every one is tried once)."""
    space = group_space(cfg, spec)
    if cfg["tuning"].get("strategy", "random") == "grid":
        combos = list(itertools.product(*(dist["choices"] for dist in space.values())))
        return dict(zip(space, combos[trial % len(combos)]))
    group = zlib.crc32(group_key(spec).encode())
    rng = np.random.default_rng([cfg["tuning"]["seed"], group, trial])
    return {name: sample(dist, rng) for name, dist in space.items()}


def grid_size(space: dict[str, dict]) -> int | None:
    """How many combinations a grid search over ``space`` has (None: a range that is not a list of choices)."""
    if any("choices" not in dist for dist in space.values()):
        return None
    return math.prod(len(dist["choices"]) for dist in space.values())


def apply_params(settings: dict, params: dict) -> dict:
    """Settings with hyperparameters replaced: 'train.optimizer.lr' is a path in the training settings,
    'balancer.alpha' a parameter of the method (likewise fusion, backbone), 'encoder.text.dim' one of the encoder a
    modality gets instead of the backbone."""
    for name, value in params.items():
        section, _, key = name.partition(".")
        if section == "train":
            *parents, leaf = key.split(".")
            node = settings["train"]
            for p in parents:
                node = node[p]
            node[leaf] = value
        elif section == "encoder":  # encoder.<modality>.<parameter>
            modality, _, key = key.partition(".")
            settings["backbone"]["encoders"][modality]["params"][key] = value
        else:
            settings[section]["params"][key] = value
    return settings


def tuning_identity(cfg: dict, spec: RunSpec) -> dict:
    """What defines a group's tuning (its budget, seeds and space) — its outcome follows from it."""
    t = cfg["tuning"]
    out = {"trials": t["trials"], "seed": t["seed"], "train_seed": t["train_seed"], "space": group_space(cfg, spec)}
    if t.get("strategy", "random") != "random":  # absent for random search: identities made before it stay valid
        out["strategy"] = t["strategy"]
    return out
