"""``python -m benchmark compare A B``: two experiments' leaderboards, or two runs, side by side.

An experiment is a folder with a ``leaderboard.csv`` (``results/default``) or its name (``default`` for
``results/default``); a run is a folder with a ``metrics.json`` (or that file). Two experiments are joined on
(dataset, backbone, fusion, method): each row shows A's and B's mean ± std of a leaderboard metric (test accuracy
by default), B − A, and which rows only one of them has. Two runs show their main metrics and every setting that
differs (the recorded settings, identity and code version).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

KEYS = ["dataset", "backbone", "fusion", "method"]
#: a missing side or value
MISSING = "—"


class CompareError(ValueError):
    """An argument that names neither an experiment nor a run, or an experiment beside a run."""


def resolve(target: str | Path, root: Path = Path(".")) -> tuple[str, Path]:
    """('experiment', folder with leaderboard.csv) or ('run', its metrics.json) for a path or an experiment name."""
    path = Path(target)
    for candidate in (path, Path(root) / "results" / str(target)):
        if candidate.is_file() and candidate.name == "metrics.json":
            return "run", candidate
        if (candidate / "metrics.json").is_file():
            return "run", candidate / "metrics.json"
        if (candidate / "leaderboard.csv").is_file():
            return "experiment", candidate
        if candidate.is_file() and candidate.name == "leaderboard.csv":
            return "experiment", candidate.parent
    raise CompareError(
        f"'{target}' is neither a run (a folder with metrics.json) nor an experiment (a folder with leaderboard.csv, "
        f"or a name under {Path(root) / 'results'})"
    )


def markdown_table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A Markdown table with padded, aligned columns (indices in ``right`` right-aligned)."""
    right = right or set()
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "| " + " | ".join(padded) + " |"

    rule = ["-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)]
    return "\n".join([line(headers), "|" + "|".join(rule) + "|", *(line(r) for r in rows)])


def _number(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


#: leaderboard column stems that hold fractions, shown in percent (points) as the leaderboard shows them
PERCENT_PREFIXES = ("test_", "val_", "probe_", "shapley_", "masked_", "audit_test_selected_acc", "audit_gap")


def _scale(metric: str) -> float:
    return 100.0 if metric.startswith(PERCENT_PREFIXES) else 1.0


def _mean_std(row: dict | None, metric: str) -> tuple[float | None, str]:
    """The row's mean and its 'mean ± std' text (its status where it has no number; MISSING without the row), in
    percent for fractions."""
    if row is None:
        return None, MISSING
    mean, std = _number(row.get(f"{metric}_mean")), _number(row.get(f"{metric}_std"))
    if mean is None:
        status = row.get("status")
        return None, str(status) if isinstance(status, str) and status else MISSING
    k = _scale(metric)
    digits = 1 if k == 100 else 4
    mean, std = k * mean, None if std is None else k * std
    return mean, f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"


def compare_experiments(a: Path, b: Path, metric: str = "test_acc") -> str:
    """The two leaderboards joined on (dataset, backbone, fusion, method); rows in A's order, then B's own."""
    import pandas as pd

    boards = [pd.read_csv(Path(d) / "leaderboard.csv", keep_default_na=False, na_values=[""]) for d in (a, b)]
    for d, board in zip((a, b), boards):
        missing = [k for k in KEYS if k not in board.columns]
        if missing:
            raise CompareError(f"{d}/leaderboard.csv has no column {', '.join(missing)}")
        if f"{metric}_mean" not in board.columns:
            raise CompareError(f"{d}/leaderboard.csv has no column {metric}_mean")
    index = [{tuple(str(r[k]) for k in KEYS): r for r in board.to_dict("records")} for board in boards]
    keys = list(dict.fromkeys([*index[0], *index[1]]))
    rows, better, worse, only = [], 0, 0, [0, 0]
    for key in keys:
        ra, rb = index[0].get(key), index[1].get(key)
        (ma, ta), (mb, tb) = _mean_std(ra, metric), _mean_std(rb, metric)
        delta = f"{mb - ma:+.{1 if _scale(metric) == 100 else 4}f}" if ma is not None and mb is not None else ""
        if ma is not None and mb is not None:
            better, worse = better + (mb > ma), worse + (mb < ma)
        note = "only in A" if rb is None else "only in B" if ra is None else ""
        if note:
            only[0 if rb is None else 1] += 1
        rows.append([*key, ta, tb, delta, note])
    both = len(keys) - sum(only)
    unit = ", in %" if _scale(metric) == 100 else ""
    header = [f"A: {a}", f"B: {b}", f"metric: {metric} (mean ± std over each row's runs{unit}); Δ = B − A", ""]
    summary = f"{both} rows in both ({better} higher in B, {worse} lower), {only[0]} only in A, {only[1]} only in B"
    table = markdown_table([*KEYS, "A", "B", "Δ", "note"], rows, right={4, 5, 6})
    return "\n".join([*header, table, "", summary])


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; an empty dict adds no key (its absence is no difference worth a row)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _setting(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)  # exact: 0.1, not 0.1000


def run_summary(m: dict) -> dict[str, Any]:
    """The main numbers of one metrics file (test and validation metrics of the selected checkpoint, and cost)."""
    best = (m.get("metrics") or {}).get("best") or {}
    last = (m.get("metrics") or {}).get("last") or {}
    selection, timing, cost = m.get("selection") or {}, m.get("timing") or {}, m.get("cost") or {}
    out: dict[str, Any] = {"status": m.get("status")}
    if m.get("reason"):
        out["reason"] = m["reason"]
    out.update({f"test {k}": v for k, v in (best.get("test") or {}).items()})
    out["test accuracy (last epoch)"] = (last.get("test") or {}).get("accuracy")
    out.update({f"val {k}": v for k, v in (best.get("val") or {}).items() if k in ("accuracy", "mAP", "loss")})
    if selection.get("best_epoch") is not None:
        out["best epoch (1-based)"] = selection["best_epoch"] + 1
    out["epochs trained"] = selection.get("epochs_trained", len(m.get("history") or []))
    out["params"] = cost.get("params")
    seconds = timing.get("seconds_per_epoch") or []
    out["s/epoch"] = sum(seconds) / len(seconds) if seconds else None
    return {k: v for k, v in out.items() if v is not None}


def compare_runs(a: Path, b: Path) -> str:
    """Two runs' main metrics (with B − A) and every recorded setting, identity or code version that differs."""
    ma, mb = (json.loads(Path(p).read_text()) for p in (a, b))
    sa, sb = run_summary(ma), run_summary(mb)
    rows = []
    for key in dict.fromkeys([*sa, *sb]):
        va, vb = sa.get(key), sb.get(key)
        na, nb = _number(va), _number(vb)
        delta = ""
        if na is not None and nb is not None and not isinstance(va, bool):
            delta = f"{nb - na:+.4f}" if isinstance(va, float) or isinstance(vb, float) else f"{int(nb - na):+d}"
        rows.append([key, _text(va) if key in sa else MISSING, _text(vb) if key in sb else MISSING, delta])
    recorded = [
        _flatten({k: m.get(k) for k in ("run", "settings", "identity", "config_hash")})
        | {"provenance.git_commit": (m.get("provenance") or {}).get("git_commit")}
        for m in (ma, mb)
    ]
    differ = [
        [key, *(_setting(r[key]) if key in r else MISSING for r in recorded)]
        for key in sorted(set(recorded[0]) | set(recorded[1]))
        if recorded[0].get(key, MISSING) != recorded[1].get(key, MISSING)
    ]
    parts = [f"A: {Path(a).parent}", f"B: {Path(b).parent}", "", markdown_table(["", "A", "B", "Δ"], rows, {1, 2, 3})]
    if differ:
        parts += ["", f"{len(differ)} recorded settings differ:", "", markdown_table(["setting", "A", "B"], differ)]
    else:
        parts += ["", "the recorded settings are the same"]
    return "\n".join(parts)


def compare(a: str | Path, b: str | Path, root: Path = Path("."), metric: str = "test_acc") -> str:
    """The side-by-side text of two experiments or two runs (see the module docstring)."""
    (kind_a, path_a), (kind_b, path_b) = resolve(a, root), resolve(b, root)
    if kind_a != kind_b:
        raise CompareError(f"'{a}' is a {kind_a} and '{b}' a {kind_b}: compare two experiments or two runs")
    if kind_a == "run":
        return compare_runs(path_a, path_b)
    return compare_experiments(path_a, path_b, metric)
