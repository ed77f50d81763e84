"""Sub-sampling and balancing a multi-label dataset: the G-Blend supplement's Algorithm 1 (§5, mini-AudioSet).

In a multi-label collection one clip adds volume to several classes, so per-class sampling cannot even out the
classes. Algorithm 1, given a minimum class volume M and a target volume N:
  1. remove the labels whose volume in the dataset D is below M;
  2. shuffle D;
  3. for each clip d: take its class c whose volume V'_c in the subset D' built so far is smallest; draw an integer
     r uniformly in [0, V_c − V'_c] (V_c: c's volume in D); select d into D' if r < N − V'_c, else skip it.
Clips left without a label after step 1 cannot be selected. Ties in step 3 (equal V'_c) go to the class that is
rarer in D, then to the first name in sorted order, so the result depends on the seed alone.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Protocol

import numpy as np

from benchmark.data.datasets import LABEL_SEPARATOR, read_manifest, split_labels, write_manifest

LOG = logging.getLogger(__name__)


class Draws(Protocol):
    """The two random operations of Algorithm 1 (a numpy Generator; tests pass scripted draws)."""

    def permutation(self, n: int) -> np.ndarray: ...

    def integers(self, low: int, high: int) -> int: ...


def balance_multilabel(
    rows: list[dict], min_class_volume: int, target_class_volume: int, rng: Draws
) -> tuple[list[dict], dict]:
    """(the selected manifest rows with removed labels dropped from their label lists, a report: removed classes,
    per-class volumes before and after, clips without any kept label)."""
    labels = [split_labels(r["label"]) for r in rows]
    volume = Counter(name for names in labels for name in names)
    removed = sorted(c for c, v in volume.items() if v < min_class_volume)
    kept_volume = {c: v for c, v in volume.items() if c not in removed}
    selected_volume = Counter({c: 0 for c in kept_volume})
    selected, unlabelled = [], 0
    for i in rng.permutation(len(rows)).tolist():
        names = [n for n in labels[i] if n in kept_volume]
        if not names:
            unlabelled += 1
            continue
        c = min(names, key=lambda n: (selected_volume[n], kept_volume[n], n))
        r = int(rng.integers(0, kept_volume[c] - selected_volume[c] + 1))  # an integer between 0 and V_c − V'_c
        if r < target_class_volume - selected_volume[c]:
            selected.append(dict(rows[i], label=LABEL_SEPARATOR.join(names)))
            selected_volume.update(names)
    report = {
        "min_class_volume": min_class_volume,
        "target_class_volume": target_class_volume,
        "clips_before": len(rows),
        "clips_after": len(selected),
        "clips_without_kept_label": unlabelled,
        "removed_classes": removed,
        "volume_before": dict(sorted(volume.items())),
        "volume_after": dict(sorted(selected_volume.items())),
    }
    return selected, report


def balance_manifest(
    raw_dir: Path,
    min_class_volume: int,
    target_class_volume: int,
    seed: int,
    log=LOG.info,
    manifest: str = "manifest.balanced.csv",
    report_name: str = "balance.json",
) -> dict:
    """Algorithm 1 on ``raw_dir/manifest.csv``: writes ``raw_dir/<manifest>`` (rows in the original order) and
    ``raw_dir/<report_name>`` (the report)."""
    raw_dir = Path(raw_dir)
    rows = read_manifest(raw_dir / "manifest.csv")
    selected, report = balance_multilabel(rows, min_class_volume, target_class_volume, np.random.default_rng(seed))
    order = {r["clip_id"]: i for i, r in enumerate(rows)}
    selected.sort(key=lambda r: order[r["clip_id"]])
    report["seed"] = seed
    write_manifest(raw_dir / manifest, selected)
    (raw_dir / report_name).write_text(json.dumps(report, indent=1) + "\n")
    log(
        f"[balance] kept {len(selected)} of {len(rows)} clips; removed classes: "
        f"{', '.join(report['removed_classes']) or 'none'}; "
        f"volumes after: {report['volume_after']}"
    )
    return report
