"""Per-modality contributions by masking Shapley values (AGM, Li et al. 2023, masks inputs; masking features, as
here, is its ``masking: feature`` option).

f(S) is the fused output with the features of every modality outside S set to zero. The share of modality m is
its Shapley value plus an equal part of the empty-coalition output, so the shares add up to the full output:

    m_m = Σ_{S ⊆ N∖{m}} |S|!(M−|S|−1)!/M! · (f(S ∪ {m}) − f(S)) + f(∅)/M,        Σ_m m_m = f(N).

For two modalities m_a = ½(f(a,v) − f(0,v) + f(a,0)) (AGM); for a linear head on concatenated features it
equals the head's own split W_m·φ_m + b/M (OGM-GE eq. 8). Everything stays differentiable.
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import torch


def coalitions(modalities: list[str]) -> list[frozenset[str]]:
    return [frozenset(c) for r in range(len(modalities) + 1) for c in itertools.combinations(modalities, r)]


def masked(features: dict[str, torch.Tensor], keep: frozenset[str]) -> dict[str, torch.Tensor]:
    return {m: f if m in keep else torch.zeros_like(f) for m, f in features.items()}


def shapley_shares(f: Callable[[frozenset[str]], torch.Tensor], modalities: list[str]) -> dict[str, torch.Tensor]:
    """Shares m_m of f(N) from the outputs of all 2^M coalitions (f is called once per coalition)."""
    n = len(modalities)
    out = {s: f(s) for s in coalitions(modalities)}
    shares = {}
    for m in modalities:
        total = out[frozenset()] / n
        for s in out:
            if m in s:
                continue
            weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            total = total + weight * (out[s | {m}] - out[s])
        shares[m] = total
    return shares
