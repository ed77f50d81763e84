"""Every run's per-epoch history where researchers already look: TensorBoard event files and one pandas table.

``write_events`` writes a run's history (``metrics.json``'s ``history``) as TensorBoard scalars into
``<run>/tensorboard/``, one event file that replaces any earlier one, so a rerun or a backfill never duplicates a
scalar: ``tensorboard --logdir results/runs`` then shows every run. The global step is the 1-based epoch; tags are
grouped by quantity with the split after the slash (``loss/train``, ``loss/val``, ``accuracy/val_audio``,
``macro_f1/val``), ``lr``, ``diagnostic/ogr``, and what the method reports (its coefficients, its loss terms) as
``coefficient/<name>``. The file is written record by record with TensorBoard's own record writer and is the same
bytes for the same history: its name is fixed and its wall times are the run's cumulative training seconds (the
'relative' axis of TensorBoard; epochs as seconds when the run recorded no timing), not the time it was written.

``history_table`` is the history of many runs as one tidy table (one row per run × epoch), which the aggregate step
writes as ``results/<experiment>/history.csv``.

``python -m benchmark events [PATH ...]`` backfills event files from metrics files: a run folder, a
``metrics.json``, or any folder searched for them (default: ``results/runs``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    import pandas as pd

#: the run's subfolder for TensorBoard, and the one event file in it (a fixed name: rewriting replaces it)
EVENTS_DIR = "tensorboard"
EVENT_FILE = "events.out.tfevents.0000000000.benchmark"
#: identifying columns of ``history_table``, before ``epoch`` and the history's own columns
RUN_COLUMNS = ["dataset", "fold", "backbone", "fusion", "method", "balancer", "seed", "status", "run_dir"]

# the harness's own history columns (benchmark.train.fit); every other column is the method's epoch_summary
_FIXED_TAGS = {
    "lr": "lr",
    "train_loss": "loss/train",
    "train_acc": "accuracy/train",
    "train_eval_loss": "loss/train_eval",
    "ogr": "diagnostic/ogr",
}


def scalar_tag(key: str) -> str:
    """The TensorBoard tag of one history column: 'val_acc_audio' -> 'accuracy/val_audio', 'val_macro_f1' ->
    'macro_f1/val', 'val_video_top5' -> 'top5/val_video', a method's 'k_audio' -> 'coefficient/k_audio'."""
    if key in _FIXED_TAGS:
        return _FIXED_TAGS[key]
    if not key.startswith("val_"):
        return f"coefficient/{key}"
    split, metric = "val", key[len("val_") :]  # val_<metric> from Predictions.metrics
    if metric.startswith("video_"):
        split, metric = "val_video", metric[len("video_") :]
    for prefix, group in (("acc_", "accuracy"), ("loss_", "loss")):  # per modality / unimodal head
        if metric.startswith(prefix):
            return f"{group}/{split}_{metric[len(prefix) :]}"
    return f"{metric}/{split}"


def _scalar(value) -> float | None:
    """A plottable number, or None: metrics files store NaN as null, so non-finite values are left out either way
    and the events of a run are the same whether written after training or backfilled from its metrics file."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _tags(history: list[dict]) -> dict[str, str]:
    """History column -> tag, unique: a method column whose tag a harness column already has keeps its raw name."""
    tags: dict[str, str] = {}
    for row in history:
        for key in row:
            if key != "epoch" and key not in tags:
                tag = scalar_tag(key)
                tags[key] = tag if tag not in tags.values() else f"coefficient/{key}"
    return tags


def write_events(run_dir: Path, history: list[dict], seconds_per_epoch: Iterable[float] | None = None) -> Path:
    """Write ``history`` (one dict per epoch, as in ``metrics.json``) as TensorBoard scalars into
    ``run_dir/tensorboard/``, removing any event file already there; the path of the file written."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.record_writer import RecordWriter

    out = Path(run_dir) / EVENTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    seconds = list(seconds_per_epoch or [])
    if len(seconds) != len(history):
        seconds = [1.0] * len(history)  # no (or partial) timing: one 'second' per epoch
    tags = _tags(history)
    tmp = out / ".events.tmp"  # no 'tfevents' in the name: a running TensorBoard never reads half a file
    with open(tmp, "wb") as f:
        writer = RecordWriter(f)
        writer.write(Event(wall_time=0.0, step=0, file_version="brain.Event:2").SerializeToString())
        elapsed = 0.0
        for i, row in enumerate(history):
            elapsed += seconds[i]
            step = int(row["epoch"]) + 1 if "epoch" in row else i + 1
            values = [
                Summary.Value(tag=tags[key], simple_value=v)
                for key, raw in row.items()
                if key != "epoch" and (v := _scalar(raw)) is not None
            ]
            if values:
                event = Event(wall_time=elapsed, step=step, summary=Summary(value=values))
                writer.write(event.SerializeToString())
        f.flush()
        os.fsync(f.fileno())
    for old in out.iterdir():  # a rerun replaces, never adds: every older event file goes
        if "tfevents" in old.name and old.name != EVENT_FILE:
            old.unlink()
    path = out / EVENT_FILE
    tmp.replace(path)
    return path


def events_from_metrics(metrics_path: Path) -> Path:
    """Backfill: the event file of the run whose ``metrics.json`` is ``metrics_path`` (beside it), from its history
    and recorded timing; the same file ``write_events`` writes after training."""
    import json

    metrics_path = Path(metrics_path)
    m = json.loads(metrics_path.read_text())
    timing = m.get("timing") or {}
    return write_events(metrics_path.parent, m.get("history") or [], timing.get("seconds_per_epoch"))


def backfill(paths: Iterable[Path]) -> list[Path]:
    """``events_from_metrics`` for every metrics file at or under ``paths`` (files, run folders or any folder)."""
    written = []
    for path in map(Path, paths):
        found = [path] if path.is_file() else sorted(path.rglob("metrics.json"))
        written += [events_from_metrics(p) for p in found]
    return written


def _fold(m: dict, run_dir: str) -> str | None:
    fold = (m.get("settings") or {}).get("fold")
    if fold is None:  # results/runs/<dataset>/<fold>/<backbone>/<fusion>/<method>/seed<k>-<id>
        parts = Path(run_dir).parts
        fold = parts[-5] if len(parts) >= 6 else None
    return fold


def history_table(records: dict[str, dict]) -> "pd.DataFrame":
    """One row per run × epoch of every record (run folder -> metrics dict, as ``leaderboard.load_runs`` returns):
    the run's identifying columns (``RUN_COLUMNS``; ``method`` as the leaderboard names it), ``epoch`` (1-based) and
    every history column of any run (empty where a run has none)."""
    import pandas as pd

    from benchmark.leaderboard import display_method

    rows, columns = [], {}
    for run_dir, m in records.items():
        run = m.get("run") or {}
        ident = {
            "dataset": run.get("dataset"),
            "fold": _fold(m, run_dir),
            "backbone": run.get("backbone"),
            "fusion": run.get("fusion"),
            "method": display_method(run["method"]) if run.get("method") else None,
            "balancer": run.get("balancer"),
            "seed": run.get("seed"),
            "status": m.get("status"),
            "run_dir": str(run_dir),
        }
        for i, entry in enumerate(m.get("history") or []):
            epoch = int(entry["epoch"]) + 1 if "epoch" in entry else i + 1
            values = {k: v for k, v in entry.items() if k != "epoch"}
            columns.update(dict.fromkeys(values))
            rows.append({**ident, "epoch": epoch, **values})
    table = pd.DataFrame(rows, columns=[*RUN_COLUMNS, "epoch", *columns])
    return table.astype({"epoch": "int64"}) if len(table) else table
