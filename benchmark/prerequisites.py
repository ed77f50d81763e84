"""What a method needs from other steps of the DAG, declared by name in ``Balancer.needs``: the one place that
knows which step produces each artefact.

A need is turned into steps (``benchmark.settings.Step``) that the resolver resolves like any other, so a
prerequisite's identity is part of the identity of the run that reads it, and one input function in the DAG lists
every step's input files. Tuning's ``best.json`` is the prerequisite of every run of a tuned group.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from benchmark.grid import NO_FUSION, RunSpec


@dataclass(frozen=True)
class Need:
    """An artefact ``key`` (what the method reads in ``RunContext.artifacts``), made by a step of ``kind`` for
    ``spec``; ``file``: the file inside that step's folder, or None when the step's output is the file."""

    key: str
    kind: str
    spec: RunSpec
    file: str | None = None


@dataclass(frozen=True)
class Artefact:
    needs: Callable[[RunSpec, list[str]], list[Need]]
    #: a tuning trial makes this artefact itself, from its own hyperparameters and the training split
    made_by_trials: bool = False
    description: str = ""


def _gblend_weights(spec: RunSpec, modalities: list[str]) -> list[Need]:
    return [Need("gblend_weights", "estimate", replace(spec, balancer="gblend"))]


def _unimodal_checkpoints(spec: RunSpec, modalities: list[str]) -> list[Need]:
    return [
        Need(
            f"unimodal_checkpoint/{m}",
            "run",
            RunSpec(spec.dataset, spec.backbone, NO_FUSION, "unimodal", spec.seed, m, spec.fold),
            "model.pt",
        )
        for m in modalities
    ]


ARTEFACTS: dict[str, Artefact] = {
    "gblend_weights": Artefact(
        _gblend_weights,
        made_by_trials=True,
        description="G-Blend's weights, estimated for the same dataset/fold/backbone/fusion/seed",
    ),
    "unimodal_checkpoints": Artefact(
        _unimodal_checkpoints, description="the best-validation weights of each modality's unimodal run (same seed)"
    ),
}


def needs_of(needs: tuple[str, ...], spec: RunSpec, modalities: list[str], in_trial: bool = False) -> list[Need]:
    """The steps behind a method's ``needs`` for one run (for a tuning trial: those it does not make itself)."""
    out: list[Need] = []
    for name in needs:
        try:
            artefact = ARTEFACTS[name]
        except KeyError:
            raise ValueError(
                f"balancer '{spec.balancer}' needs unknown artefact '{name}'; known: {', '.join(ARTEFACTS)}"
            ) from None
        if not (in_trial and artefact.made_by_trials):
            out += artefact.needs(spec, modalities)
    return out
