"""Carving a held-out part (validation, or test) out of a training assignment, stratified or by groups."""

from __future__ import annotations

import numpy as np


def carve_validation(
    assignment: dict[str, str],
    labels: dict[str, str],
    fraction: float,
    seed: int,
    groups: dict[str, str] | None = None,
    into: str = "val",
) -> dict[str, str]:
    """Move a stratified ``fraction`` of each label's training clips to ``into`` (default 'val'; at least one where
    a label has two).

    With ``groups`` (clip -> actor, recording group, ...), whole groups move instead, so that no group is in both
    parts: ``fraction`` of the training groups (at least one)."""
    rng = np.random.default_rng(seed)
    out = dict(assignment)
    if groups is not None:
        train_groups = sorted({groups[c] for c, part in assignment.items() if part == "train"})
        k = max(1, int(round(fraction * len(train_groups)))) if fraction > 0 and len(train_groups) > 1 else 0
        chosen = set(rng.permutation(train_groups)[:k].tolist())
        for clip, part in assignment.items():
            if part == "train" and groups[clip] in chosen:
                out[clip] = into
        return out
    by_label: dict[str, list[str]] = {}
    for clip, part in sorted(assignment.items()):
        if part == "train":
            by_label.setdefault(labels[clip], []).append(clip)
    for label in sorted(by_label):
        clips = by_label[label]
        k = int(round(fraction * len(clips)))
        if k == 0 and len(clips) >= 2 and fraction > 0:
            k = 1
        for clip in rng.permutation(clips)[:k]:
            out[str(clip)] = into
    return out
