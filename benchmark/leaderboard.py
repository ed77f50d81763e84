"""Aggregate metrics files into the leaderboard (CSV + Markdown) and one bar chart per dataset × backbone.

Numbers are test metrics of each run's best-validation checkpoint, mean ± sample standard deviation over
seeds. Everything is rebuilt from the metrics files; combinations a method cannot run appear as n/a rows
with the reason, runs without a metrics file as 'not run'.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from benchmark.grid import NO_FUSION, RunSpec, dataset_modalities, grid_runs

NA = "n/a"


def display_method(spec_or_method: RunSpec | str) -> str:
    method = spec_or_method.method if isinstance(spec_or_method, RunSpec) else spec_or_method
    balancer, _, modality = method.partition("-")
    return f"{modality}-only" if modality else balancer


def load_runs(cfg: dict, root: Path = Path(".")) -> pd.DataFrame:
    """One row per scheduled run (with its test/val metrics) or per inapplicable combination."""
    runs, skipped = grid_runs(cfg)
    rows = []
    for spec in runs:
        row = {"dataset": spec.dataset, "backbone": spec.backbone, "fusion": spec.fusion, "method": display_method(spec),
               "balancer": spec.balancer, "fold": spec.fold, "seed": spec.seed}
        path = root / spec.run_dir / "metrics.json"
        if not path.exists():
            rows.append({**row, "status": "not run", "reason": f"no {path}"})
            continue
        m = json.loads(path.read_text())
        row.update(status=m["status"], reason=m.get("reason", ""), num_classes=m["run"].get("num_classes"), notes="; ".join(m.get("notes", [])),
                   config_hash=m["config_hash"], git_commit=m["provenance"]["git_commit"])
        if m["status"] == "ok":
            best, last = m["metrics"]["best"], m["metrics"]["last"]
            row.update(best_epoch=m["selection"]["best_epoch"], val_acc=best["val"]["accuracy"],
                       test_acc=best["test"]["accuracy"], test_f1=best["test"]["macro_f1"],
                       test_acc_last=last["test"]["accuracy"])
            for mod in dataset_modalities(cfg, spec.dataset):
                if spec.modality == mod:
                    row[f"test_acc_{mod}"] = best["test"]["accuracy"]
                elif f"acc_{mod}" in best["test"]:
                    row[f"test_acc_{mod}"] = best["test"][f"acc_{mod}"]
        rows.append(row)
    for spec, reason in skipped:
        rows.append({"dataset": spec.dataset, "backbone": spec.backbone, "fusion": spec.fusion, "method": display_method(spec),
                     "balancer": spec.balancer, "fold": spec.fold, "seed": spec.seed, "status": NA, "reason": reason})
    return pd.DataFrame(rows)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds (and folds) per dataset × backbone × fusion × method, in grid order."""
    keys = ["dataset", "backbone", "fusion", "method"]
    metric_cols = [c for c in runs.columns if c.startswith(("test_", "val_")) or c == "best_epoch"]
    out = []
    for key, group in runs.groupby(keys, sort=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(keys, key))
        row["balancer"] = group["balancer"].iloc[0]
        row["folds"] = ok["fold"].nunique() if len(ok) else 0
        row["fold_list"] = ",".join(sorted(set(group["fold"])))
        row["num_classes"] = group["num_classes"].max() if "num_classes" in group else math.nan
        row["runs"] = len(ok)
        statuses = sorted(set(group["status"]) - {"ok"})
        row["status"] = "ok" if not statuses else ("ok, " if len(ok) else "") + ", ".join(statuses)
        reasons = sorted({r for r in group.get("reason", pd.Series(dtype=str)).dropna() if r})
        row["reason"] = "; ".join(reasons)
        notes = sorted({n for joined in group.get("notes", pd.Series(dtype=str)).dropna() for n in joined.split("; ") if n})
        row["notes"] = "; ".join(notes)
        for col in metric_cols:
            values = ok[col].dropna() if col in ok else pd.Series(dtype=float)
            row[f"{col}_mean"] = values.mean() if len(values) else math.nan
            row[f"{col}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        out.append(row)
    return pd.DataFrame(out)


def _pm(mean: float, std: float) -> str:
    if mean != mean:  # NaN
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std == std else f"{100 * mean:.1f}"


def to_markdown(summary: pd.DataFrame, cfg: dict) -> str:
    lines = ["# Leaderboard", "",
             "Test accuracy (%) of the best-validation checkpoint, mean ± std over runs (seeds × folds). `acc <modality>`: accuracy of",
             "that modality's share of the fused head (its per-modality logits: an exact split of the head for concat and",
             "sum, a zero-masking Shapley estimate for fusions that mix modalities first); for `<modality>-only` rows,",
             "the unimodal model itself. Regenerate with `snakemake` (or `python -m benchmark aggregate`).", ""]
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        modalities = dataset_modalities(cfg, dataset)
        lines += [f"## {dataset} · {backbone}", ""]
        folds = sorted({fold for joined in table["fold_list"] for fold in joined.split(",") if fold})
        if len(folds) > 1:
            lines += [f"{len(folds)} folds ({', '.join(folds)}); runs = seeds × folds.", ""]
        header = ["method", "fusion", "runs", "test acc", "macro-F1"] + [f"acc {m}" for m in modalities] + ["val acc", "status"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        footnotes: list[str] = []
        for _, r in table.iterrows():
            fusion = "—" if r["fusion"] == NO_FUSION else r["fusion"]
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
            for note in filter(None, r["notes"].split("; ")):
                if note not in footnotes:
                    footnotes.append(note)
                status += f" [{footnotes.index(note) + 1}]"
            cells = [r["method"], fusion, str(r["runs"]), _pm(r.get("test_acc_mean", math.nan), r.get("test_acc_std", math.nan)),
                     _pm(r.get("test_f1_mean", math.nan), r.get("test_f1_std", math.nan))]
            cells += [_pm(r.get(f"test_acc_{m}_mean", math.nan), r.get(f"test_acc_{m}_std", math.nan)) for m in modalities]
            cells += [_pm(r.get("val_acc_mean", math.nan), r.get("val_acc_std", math.nan)), status]
            lines.append("| " + " | ".join(cells) + " |")
        if footnotes:
            lines += [""] + [f"[{i}] {note}" + ("" if i == len(footnotes) else "  ") for i, note in enumerate(footnotes, 1)]
        lines.append("")
    return "\n".join(lines)


def plot(summary: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Bars per method × fusion with std error bars; unimodal runs as dashed reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        fused = table[(table["fusion"] != NO_FUSION) & (table["runs"] > 0)]
        methods = list(dict.fromkeys(fused["method"]))
        fusions = list(dict.fromkeys(fused["fusion"]))
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) + 2), 4.2))
        width = 0.8 / max(1, len(fusions))
        for j, fusion in enumerate(fusions):
            part = fused[fused["fusion"] == fusion].set_index("method").reindex(methods)
            xs = [i + (j - (len(fusions) - 1) / 2) * width for i in range(len(methods))]
            ax.bar(xs, 100 * part["test_acc_mean"], width, yerr=100 * part["test_acc_std"].fillna(0), capsize=3, label=fusion)
        for k, (_, r) in enumerate(table[(table["fusion"] == NO_FUSION) & (table["runs"] > 0)].iterrows()):
            ax.axhline(100 * r["test_acc_mean"], color=f"C{len(fusions) + k}", linestyle="--", label=r["method"])
        classes = table["num_classes"].max()
        if classes == classes:  # not NaN
            ax.axhline(100 / classes, color="grey", linestyle=":", label="chance")
        ax.set_xticks(range(len(methods)), methods, rotation=20)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{dataset} · {backbone} (mean ± std over seeds and folds)")
        ax.legend(fontsize=8, ncols=2)
        fig.tight_layout()
        path = out_dir / f"{dataset}__{backbone}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def aggregate(cfg: dict, out_dir: Path = Path("results"), root: Path = Path(".")) -> pd.DataFrame:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = load_runs(cfg, root)
    summary = summarize(runs)
    summary.to_csv(out_dir / "leaderboard.csv", index=False, float_format="%.6g")
    (out_dir / "leaderboard.md").write_text(to_markdown(summary, cfg))
    plot(summary, out_dir / "plots")
    return summary
