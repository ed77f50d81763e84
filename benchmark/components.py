"""The built-in components of every grid axis, and the registry of an axis by name.

Importing this module imports the modules whose decorators fill the registries (balancers, fusions, backbones,
datasets), so that ``benchmark.registry`` never has to import its clients.
"""

from __future__ import annotations

import benchmark.data.avdigits  # noqa: F401  (registers avdigits)
import benchmark.data.cmu_mosi  # noqa: F401  (registers cmu_mosi, cmu_mosei)
import benchmark.data.features  # noqa: F401  (registers features: pre-extracted feature arrays)
import benchmark.data.food101  # noqa: F401  (registers food101: UPMC Food-101, image + text)
import benchmark.data.real  # noqa: F401  (its decorators register the real datasets)
import benchmark.models.encoders  # noqa: F401  (the encoders of tensor modalities: mlp, sequence, text)
import benchmark.models.stream_fusions  # noqa: F401  (the fusions between encoder blocks)
from benchmark.balancers import BALANCERS
from benchmark.data.datasets import DATASETS
from benchmark.models.backbones import BACKBONES
from benchmark.models.fusions import FUSIONS
from benchmark.registry import Registry

AXES = ("datasets", "backbones", "fusions", "balancers")
_REGISTRIES: dict[str, Registry] = {
    "datasets": DATASETS,
    "backbones": BACKBONES,
    "fusions": FUSIONS,
    "balancers": BALANCERS,
}


def registry(axis: str) -> Registry:
    """The registry of one grid axis ('datasets', 'backbones', 'fusions', 'balancers')."""
    try:
        return _REGISTRIES[axis]
    except KeyError:
        raise ValueError(f"unknown axis '{axis}'; axes: {', '.join(AXES)}") from None
