"""Plots and the static HTML report, built from the aggregated tables and the metrics records alone.

Per dataset × backbone: accuracy bars per method × fusion, OGR per epoch, and per fusion the training curves
(accuracy and loss of the fused head and of each modality's share) and the traces of each method's coefficients
(OGM's discrepancy ratio and k, MLB's coefficients, G-Blend's weights, ...), all as means over the row's runs. Across
the experiment: the Friedman test's critical-difference diagram (Nemenyi) over dataset × backbone × fusion blocks.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import pandas as pd

from benchmark.grid import NO_FUSION, dataset_modalities
from benchmark.leaderboard import (
    AUDIT_CAPTION,
    CD_FIGURE,
    COLUMN_GUIDE,
    agreement_table,
    audit_table,
    diagnostics_table,
    friedman,
    friedman_text,
    leaderboard_table,
    mean_ranks,
    robustness_caption,
    robustness_table,
    tuning_statement,
)

#: history keys every run has; anything else a method tracked is a coefficient trace
STANDARD_KEYS = ("epoch", "lr", "train_loss", "train_acc", "train_eval_loss", "ogr")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def accuracy_bars(table: pd.DataFrame, title: str, path: Path) -> Path:
    """Bars per method × fusion with std error bars; unimodal runs as dashed reference lines; chance dotted."""
    plt = _pyplot()
    fused = table[(table["fusion"] != NO_FUSION) & (table["runs"] > 0)]
    methods = list(dict.fromkeys(fused["method"]))
    fusions = list(dict.fromkeys(fused["fusion"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(methods) + 2), 4.2))
    width = 0.8 / max(1, len(fusions))
    for j, fusion in enumerate(fusions):
        part = fused[fused["fusion"] == fusion].set_index("method").reindex(methods)
        xs = [i + (j - (len(fusions) - 1) / 2) * width for i in range(len(methods))]
        ax.bar(
            xs,
            100 * part["test_score_mean"],
            width,
            yerr=100 * part["test_score_std"].fillna(0),
            capsize=3,
            label=fusion,
        )
    for k, (_, r) in enumerate(table[(table["fusion"] == NO_FUSION) & (table["runs"] > 0)].iterrows()):
        ax.axhline(100 * r["test_score_mean"], color=f"C{len(fusions) + k}", linestyle="--", label=r["method"])
    classes = table["num_classes"].max()
    multi_label = bool(table["multi_label"].any()) if "multi_label" in table else False
    if classes == classes and not multi_label:  # not NaN; multi-label mAP has no single chance level
        ax.axhline(100 / classes, color="grey", linestyle=":", label="chance")
    ax.set_xticks(range(len(methods)), methods, rotation=20)
    ax.set_ylabel("test mAP (%)" if multi_label else "test accuracy (%)")
    ax.set_title(f"{title} (mean ± std over seeds and folds)")
    ax.legend(fontsize=8, ncols=2)
    return _save(fig, path)


def mean_history(records: list[dict]) -> pd.DataFrame:
    """Per-epoch mean over runs of every numeric history column."""
    frames = [pd.DataFrame(r["history"]) for r in records]
    return pd.concat(frames).groupby("epoch").mean(numeric_only=True) if frames else pd.DataFrame()


def _panels(n: int, ncols: int = 4, size: tuple[float, float] = (3.6, 2.8)):
    plt = _pyplot()
    ncols = min(ncols, max(1, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def curves(histories: dict[str, pd.DataFrame], modalities: list[str], kind: str, title: str, path: Path) -> Path:
    """One panel per method: validation accuracy (kind 'accuracy') or loss (kind 'loss') of the fused head and of
    each modality's share, the training-set value, and (losses) each head's running training loss if tracked."""
    fig, axes = _panels(len(histories))
    for ax, (method, h) in zip(axes, histories.items()):
        if kind == "accuracy":
            series = {
                "val fused": "val_accuracy",
                "train (running)": "train_acc",
                **{f"val {m}": f"val_acc_{m}" for m in modalities},
            }
        else:
            series = {
                "val fused": "val_loss",
                "train (fixed subset)": "train_eval_loss",
                **{f"val {m}": f"val_loss_{m}" for m in modalities},
                **{f"train {c[5:]} (running)": c for c in h.columns if c.startswith("loss_")},
            }  # per-head training losses
        for label, col in series.items():
            if col in h:
                ax.plot(
                    h.index + 1,
                    (100 if kind == "accuracy" else 1) * h[col],
                    marker=".",
                    label=label,
                    linestyle="--" if label.startswith("train") else "-",
                )
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("accuracy (%)" if kind == "accuracy" else "cross-entropy")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def coefficient_traces(histories: dict[str, pd.DataFrame], title: str, path: Path) -> Path | None:
    """One panel per method that tracked coefficients, each coefficient's per-epoch mean."""
    traced = {
        method: [c for c in h.columns if c not in STANDARD_KEYS and not c.startswith(("val_", "loss_"))]
        for method, h in histories.items()
    }
    traced = {method: cols for method, cols in traced.items() if cols}
    if not traced:
        return None
    fig, axes = _panels(len(traced))
    for ax, (method, cols) in zip(axes, traced.items()):
        h = histories[method]
        for col in cols:
            ax.plot(h.index + 1, h[col], marker=".", label=col)
        ax.set_title(method, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def ogr_curves(histories: dict[str, pd.DataFrame], title: str, path: Path) -> Path | None:
    """OGR between consecutive epochs (G-Blend eq. 3) per method × fusion, log scale."""
    plt = _pyplot()
    lines = {name: h["ogr"].dropna() for name, h in histories.items() if "ogr" in h and h["ogr"].notna().any()}
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.0))
    for name, s in lines.items():
        ax.plot(s.index + 1, s.clip(lower=1e-3), marker=".", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("OGR vs previous epoch")
    ax.set_title(title)
    ax.legend(fontsize=6, ncols=3)
    return _save(fig, path)


def critical_difference_diagram(result: dict, path: Path) -> Path:
    """The Friedman/Nemenyi comparison as a critical-difference diagram: methods at their mean rank (1 = best) on a
    rank axis from 1 to k, joined where Nemenyi's test finds no difference at the level, the critical difference
    drawn above the axis (Demšar 2006)."""
    import scikit_posthocs

    plt = _pyplot()
    ranks, cd, k = result["mean_ranks"], result["cd"], len(result["methods"])
    fig, ax = plt.subplots()
    scikit_posthocs.critical_difference_diagram(
        ranks,
        result["nemenyi"],
        alpha=result["alpha"],
        ax=ax,
        label_fmt_left="{label} ({rank:.2f})",
        label_fmt_right="({rank:.2f}) {label}",
    )
    bottom, _ = ax.get_ylim()  # the library puts the rank axis at y = 0 and the labels below it
    ax.set_ylim(bottom, 1.2)
    ax.set_xlim(1, max(k, 1 + cd))
    ax.plot([1, 1 + cd], [0.8, 0.8], color="k", linewidth=2)
    ax.plot([1, 1], [0.7, 0.9], color="k")
    ax.plot([1 + cd, 1 + cd], [0.7, 0.9], color="k")
    ax.text(1 + cd / 2, 0.9, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    height = 0.42 * (1.2 - bottom) + 1.2
    fig.set_size_inches(9.0, height)
    margin = min(0.4, 0.0095 * (max(len(str(m)) for m in ranks.index) + 9))  # the labels sit outside the axes
    fig.subplots_adjust(left=margin, right=1 - margin, bottom=0.15 / height, top=1 - 0.75 / height)
    fig.suptitle(
        f"Friedman over {len(result['blocks'])} dataset × backbone × fusion blocks: χ²_F = {result['statistic']:.2f}, "
        f"p = {result['p']:.3g}\nmean rank (1 = best); bars join methods Nemenyi does not separate at "
        f"α = {result['alpha']:g}",
        fontsize=9,
    )
    fig.savefig(path, dpi=100)  # not tight_layout: it ignores the labels outside the axes
    plt.close(fig)
    return path


def _slug(*parts: str) -> str:
    return "__".join(parts)


def dataset_plots(
    cfg: dict,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    records: dict[str, dict],
    dataset: str,
    backbone: str,
    plots: Path,
) -> list[tuple[str, Path]]:
    """Every figure of one dataset × backbone as (caption, path)."""
    out = [
        (
            "test accuracy per method and fusion",
            accuracy_bars(table, f"{dataset} · {backbone}", plots / f"{_slug(dataset, backbone)}.png"),
        )
    ]
    ok = runs[(runs["status"] == "ok") & (runs["dataset"] == dataset) & (runs["backbone"] == backbone)]
    modalities = dataset_modalities(cfg, dataset)
    by_row: dict[tuple[str, str], pd.DataFrame] = {}
    for (fusion, method), part in ok.groupby(["fusion", "method"], sort=False):
        by_row[(fusion, method)] = mean_history([records[d] for d in part["run_dir"]])
    for fusion in dict.fromkeys(f for f, _ in by_row):
        histories = {method: h for (f, method), h in by_row.items() if f == fusion}
        name = "unimodal" if fusion == NO_FUSION else fusion
        for kind in ("accuracy", "loss"):
            out.append(
                (
                    f"validation {kind} per epoch, fusion {name}",
                    curves(
                        histories,
                        modalities,
                        kind,
                        f"{dataset} · {backbone} · {name}: {kind}",
                        plots / f"{_slug(dataset, backbone, name, kind)}.png",
                    ),
                )
            )
        traces = coefficient_traces(
            histories,
            f"{dataset} · {backbone} · {name}: method coefficients (epoch means)",
            plots / f"{_slug(dataset, backbone, name, 'coefficients')}.png",
        )
        if traces:
            out.append((f"method coefficients per epoch, fusion {name}", traces))
    ogr_plot = ogr_curves(
        {f"{m} · {f}": h for (f, m), h in by_row.items()},
        f"{dataset} · {backbone}: OGR per epoch",
        plots / f"{_slug(dataset, backbone, 'ogr')}.png",
    )
    if ogr_plot:
        out.append(("overfitting-to-generalisation ratio between consecutive epochs", ogr_plot))
    return out


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3}td:nth-child(2),td:nth-child(3){text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}.notes{font-size:13px;color:#444}"""


def _table_html(df: pd.DataFrame, css_class: str) -> str:
    return df.to_html(index=False, classes=css_class, border=0, na_rep="–", escape=True)


def write_report(
    cfg: dict, summary: pd.DataFrame, runs: pd.DataFrame, records: dict[str, dict], agree: pd.DataFrame, out_dir: Path
) -> Path:
    """``out_dir/report.html`` with every table and figure (figures as files under ``out_dir/plots``)."""
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.png"):  # the report shows exactly the current grid's figures
        stale.unlink()
    board = cfg.get("leaderboard", {})
    reference, alpha = board.get("reference", "joint"), board.get("alpha", 0.05)
    commits = sorted({r["provenance"]["git_commit"] for r in records.values()})
    body = [
        "<h1>Multimodal balancing benchmark: leaderboard</h1>",
        f"<p>{len(records)} finished runs; code {html.escape(', '.join(commits) or 'n/a')}. Test metrics of each run's "
        "best-validation checkpoint, mean ± std over seeds × folds, with a 95% bootstrap interval over test clips; "
        f"* = differs from {html.escape(reference)} at Holm-adjusted p &lt; {alpha:g}. Rebuilt from the metrics files "
        "by <code>python -m benchmark aggregate</code>.</p>",
        f"<p>{html.escape(tuning_statement(summary)).replace('**', '')}</p>",
        "<ul>" + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(t)}</li>" for n, t in COLUMN_GUIDE) + "</ul>",
    ]
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        modalities = dataset_modalities(cfg, dataset)
        body.append(
            f"<h2 id='{html.escape(_slug(dataset, backbone))}'>{html.escape(dataset)} · {html.escape(backbone)}</h2>"
        )
        main, footnotes = leaderboard_table(table, modalities, reference)
        body.append(_table_html(main, "leaderboard"))
        if footnotes:
            body.append("<ol class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ol>")
        diag = diagnostics_table(table, modalities)
        if not diag.empty:
            body += ["<h3>Diagnostics</h3>", _table_html(diag, "diagnostics")]
        robust = robustness_table(table, modalities)
        if not robust.empty:
            body += [
                f"<h3>Missing-modality robustness</h3><p class='notes'>{html.escape(robustness_caption(table))}</p>",
                _table_html(robust, "robustness"),
            ]
        audit = audit_table(table)
        if not audit.empty:
            body += [
                "<h3>What test-set selection would have claimed (optimistic)</h3>"
                f"<p class='notes'>{html.escape(AUDIT_CAPTION)}</p>",
                _table_html(audit, "audit"),
            ]
        part = agree[(agree["dataset"] == dataset) & (agree["backbone"] == backbone)] if len(agree) else agree
        if len(part):
            body += [
                "<h3>Agreement with the unimodal models</h3><p class='notes'>share of test samples · multimodal "
                "accuracy (%)</p>",
                _table_html(agreement_table(part, modalities), "agreement"),
            ]
        body.append("<h3>Plots</h3>")
        for caption, path in dataset_plots(cfg, table, runs, records, dataset, backbone, plots):
            rel = path.relative_to(out_dir).as_posix()
            body.append(
                f"<figure><img src='{html.escape(rel)}' "
                f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    ranks = mean_ranks(summary)
    if len(ranks):
        body += ["<h2>Mean rank across datasets</h2>", _table_html(ranks.round(2), "ranks")]
    result = friedman(summary, alpha)
    body += [
        "<h2 id='friedman'>Friedman test and critical-difference diagram</h2>",
        f"<p class='friedman'>{html.escape(friedman_text(result))}</p>",
    ]
    if result["applicable"]:
        path = critical_difference_diagram(result, plots / CD_FIGURE)
        caption = f"critical-difference diagram (Nemenyi), Friedman p = {result['p']:.4g}"
        body.append(
            f"<figure><img src='{html.escape(path.relative_to(out_dir).as_posix())}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path
