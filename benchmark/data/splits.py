"""The split stage: which accepted clip is train, val or test in each fold, written to ``splits/<fold>.csv``.

Splits are fixed files that training reads, so a split is reviewable and identical for every method. A fold whose
source has no validation part gets one carved from its training part (stratified by label, seeded); test clips
are never moved.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import Callable

from benchmark.data.datasets import SPLITS, Dataset, read_manifest
from benchmark.data.shards import INDEX
from benchmark.metrics import video_of

LOG = logging.getLogger(__name__)


class SplitError(RuntimeError):
    pass


def accepted_clips(processed_dir: Path) -> list[str]:
    """The cached clips, in cache order (from the gather step's index)."""
    with (Path(processed_dir) / INDEX).open(newline="") as f:
        return [r["clip_id"] for r in csv.DictReader(f)]


def write_splits(
    dataset: Dataset,
    raw_dir: Path,
    processed_dir: Path,
    folds: list[str] | None = None,
    log: Callable[[str], None] = LOG.info,
    manifest: str = "manifest.csv",
    splits_dir: Path | None = None,
) -> dict[str, dict]:
    """Assign every accepted clip in each fold (default: all the dataset's folds); returns per-fold counts.

    The dataset assigns videos (manifest rows); the clips cut from one video (``<video>#<k>``) share its part."""
    rows = {r["clip_id"]: r for r in read_manifest(Path(raw_dir) / manifest)}
    clips = accepted_clips(processed_dir)
    accepted = [rows[v] for v in dict.fromkeys(video_of(c) for c in clips)]
    out_dir = Path(splits_dir or Path(processed_dir) / "splits")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = {}
    known = dataset.folds()
    for fold in folds or known:
        if fold not in known:
            raise SplitError(f"dataset '{dataset.name}' has no fold '{fold}'; its folds: {', '.join(known)}")
        assignment = dataset.split(accepted, fold)
        if len(clips) != len(accepted):  # several clips per video: each takes its video's part
            assignment = {c: assignment[video_of(c)] for c in clips if video_of(c) in assignment}
        unknown = set(assignment.values()) - set(SPLITS)
        if unknown:
            raise SplitError(f"fold '{fold}': unknown split names {sorted(unknown)}; use {', '.join(SPLITS)}")
        counts = Counter(assignment.values())
        empty = [s for s in SPLITS if not counts[s]]
        if empty:
            raise SplitError(
                f"fold '{fold}' of dataset '{dataset.name}' has no {' / '.join(empty)} clips "
                f"({dict(counts)}); check the dataset's split settings"
            )
        tmp = out_dir / f"{fold}.csv.tmp"
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["clip_id", "split"])
            writer.writerows(sorted(assignment.items()))
        tmp.replace(out_dir / f"{fold}.csv")
        summary[fold] = {s: counts[s] for s in SPLITS}
        log(f"[split] {dataset.name} fold {fold}: {summary[fold]} (unassigned: {len(clips) - len(assignment)})")
    return summary


def read_split(processed_dir: Path, fold: str, part: str, splits_dir: Path | None = None) -> list[str]:
    """Clip ids of one part ('train', 'val', 'test') of one fold (``splits_dir``: default
    ``<processed_dir>/splits``)."""
    path = Path(splits_dir or Path(processed_dir) / "splits") / f"{fold}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the split step (python -m benchmark split)")
    with path.open(newline="") as f:
        return [r["clip_id"] for r in csv.DictReader(f) if r["split"] == part]
