"""The report's figures, built from the aggregated tables and the metrics records alone.

Per dataset × backbone: accuracy bars per method × fusion, OGR per epoch (one panel per fusion), and per fusion the
training curves (accuracy and loss of the fused head and of each modality's share) and the traces of each method's
coefficients (OGM's discrepancy ratio and k, MLB's coefficients, G-Blend's weights, ...), as means over the row's runs
with a band of ± one standard deviation. Across the experiment: the Friedman test's critical-difference diagram
(Nemenyi) over dataset × backbone × fusion blocks.

Every figure has a builder that returns the matplotlib Figure (``*_figure``, for tests and notebooks) and a function
that saves it as a PNG at ``DPI``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from benchmark.grid import NO_FUSION, dataset_modalities

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

#: history keys every run has; anything else a method tracked is a coefficient trace
STANDARD_KEYS = ("epoch", "lr", "train_loss", "train_acc", "train_eval_loss", "ogr")
DPI = 100
TITLE_SIZE, SUBTITLE_SIZE, PANEL_TITLE_SIZE, LABEL_SIZE, TICK_SIZE, LEGEND_SIZE = 12, 9, 10, 9, 8, 8
BAND_ALPHA = 0.18
#: a panel's values spanning more than this factor get a log (or symlog) y-axis, else the bulk is a flat line
LOG_SPAN = 100.0


@dataclass(frozen=True)
class RowHistory:
    """Per-epoch statistics of one row's runs (index: epoch, from 0). Runs may stop at different epochs: each epoch's
    values are over the runs that reached it."""

    mean: pd.DataFrame
    std: pd.DataFrame  # sample std (ddof=1, as the summary's); NaN where fewer than 2 runs reached the epoch
    runs: pd.Series  # how many runs reached each epoch


History = pd.DataFrame | RowHistory


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(width: float, height: float) -> Figure:
    # constrained layout keeps legends placed outside the axes, suptitles and rotated labels inside the canvas
    return _pyplot().figure(figsize=(width, height), layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    _pyplot().close(fig)
    return path


def _palette(n: int) -> list:
    """``n`` distinct colours: tab10, then tab20 (dark shades before light), then tab20b/c, then a colormap."""
    from matplotlib import colormaps

    if n <= 10:
        return list(colormaps["tab10"].colors)[: max(n, 1)]
    tab20 = list(colormaps["tab20"].colors)
    colours = tab20[0::2] + tab20[1::2] + list(colormaps["tab20b"].colors) + list(colormaps["tab20c"].colors)
    if n <= len(colours):
        return colours[:n]
    return [colormaps["turbo"](x) for x in np.linspace(0.0, 1.0, n)]


def _linestyle(i: int) -> str:
    # lines of the second ten colours are the first ten's lighter shades: a different dash tells them apart
    return ("-", "--", "-.", ":")[(i // 10) % 4]


def _integer_epochs(ax: Axes) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _scale_for(values: np.ndarray, symlog: bool = True) -> tuple[str, float]:
    """'linear', 'log' or ('symlog', linthresh) for values whose magnitudes span more than ``LOG_SPAN``; without
    ``symlog`` a log axis leaves out values ≤ 0 (a few negative loss terms must not halve every loss panel)."""
    values = values[np.isfinite(values)]
    if not symlog:
        values = values[values > 0]
    magnitudes = np.abs(values[values != 0])
    if not len(magnitudes):
        return "linear", 0.0
    floor = float(np.percentile(magnitudes, 5))
    if magnitudes.max() / floor <= LOG_SPAN:
        return "linear", 0.0
    return ("log", 0.0) if (values > 0).all() else ("symlog", floor)


def _apply_scale(ax: Axes, scale: tuple[str, float], means: np.ndarray) -> None:
    """Set the y-scale after the lines are drawn; on a log axis the bottom follows the means, as a band whose mean
    − std is ≤ 0 would otherwise pull it down by decades."""
    kind, linthresh = scale
    means = means[np.isfinite(means)]
    if kind == "log":
        ax.set_yscale("log", nonpositive="clip")
        positive = means[means > 0]
        if len(positive):
            ax.set_ylim(bottom=float(positive.min()) / 2)
    elif kind == "symlog":
        from matplotlib.ticker import FixedLocator

        ax.set_yscale("symlog", linthresh=linthresh)
        if len(means):
            ax.set_ylim(bottom=float(means.min()) * 2 if means.min() < 0 else 0.0)
            ax.yaxis.set_major_locator(FixedLocator(_symlog_ticks(linthresh, *ax.get_ylim())))


def _symlog_ticks(linthresh: float, low: float, high: float, most: int = 4) -> list[float]:
    """0 and at most ``most`` decades per side, clear of the linear region (the default ticks every decade and at
    ±linthresh, whose labels overlap around 0)."""
    top = max(abs(low), abs(high), linthresh * 10)
    first, last = math.floor(math.log10(linthresh)) + 1, math.floor(math.log10(top))
    step = max(1, math.ceil((last - first + 1) / most))
    decades = [10.0**e for e in range(last, first - 1, -step)]
    return sorted([0.0, *(d for d in decades if d <= high), *(-d for d in decades if -d >= low)])


def _scale_note(scale: tuple[str, float]) -> str:
    return {"log": " (log scale)", "symlog": " (symlog scale)"}.get(scale[0], "")


def _as_row(h: History) -> RowHistory:
    if isinstance(h, RowHistory):
        return h
    return RowHistory(h, pd.DataFrame(index=h.index), pd.Series(1, index=h.index, dtype=int))


# ---------------------------------------------------------------------------------------------------------- bars


def _error_bars(rows: pd.DataFrame, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Mean, lower and upper end (%) of each row's error bar, clipped to [0, 100], and what the bars are.

    The bootstrap interval over test clips is of top-1 accuracy, so it is the bar only where the score is accuracy;
    rows without per-clip records fall back to mean ± std over runs."""
    mean = 100 * rows["test_score_mean"].to_numpy(float)
    std = 100 * rows["test_score_std"].fillna(0).to_numpy(float)
    lo, hi = mean - std, mean + std
    has_ci = np.zeros(len(rows), bool)
    if not multi_label and {"test_acc_ci_lo", "test_acc_ci_hi"} <= set(rows.columns):
        ci_lo, ci_hi = 100 * rows["test_acc_ci_lo"].to_numpy(float), 100 * rows["test_acc_ci_hi"].to_numpy(float)
        has_ci = np.isfinite(ci_lo) & np.isfinite(ci_hi)
        lo, hi = np.where(has_ci, ci_lo, lo), np.where(has_ci, ci_hi, hi)
    lo = np.clip(np.fmin(lo, mean), 0, 100)  # fmin keeps the mean inside its bar: error lengths stay non-negative
    hi = np.clip(np.fmax(hi, mean), 0, 100)
    shown = np.isfinite(mean)
    if shown.any() and has_ci[shown].all():
        what = "95% bootstrap interval over test clips"
    elif has_ci[shown].any():
        what = "95% bootstrap interval over test clips (± std over runs where clips were not recorded)"
    else:
        what = "mean ± std over runs"
    return mean, lo, hi, what


def accuracy_bars_figure(table: pd.DataFrame, title: str) -> Figure:
    """Bars per method × fusion with 95% intervals; unimodal runs as dashed reference lines; chance dotted."""
    fused = table[(table["fusion"] != NO_FUSION) & (table["runs"] > 0)]
    unimodal = table[(table["fusion"] == NO_FUSION) & (table["runs"] > 0)]
    methods = list(dict.fromkeys(fused["method"]))
    fusions = list(dict.fromkeys(fused["fusion"]))
    multi_label = bool(table["multi_label"].any()) if "multi_label" in table else False
    metric = "test mAP (%)" if multi_label else "test accuracy (%)"
    fig = _figure(max(7.0, 0.5 * len(methods) * max(1, len(fusions)) ** 0.5 + 4.0), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(fusions))
    colours = _palette(len(fusions) + len(unimodal))
    ends, whats = [], set()
    for j, fusion in enumerate(fusions):
        part = fused[fused["fusion"] == fusion].set_index("method").reindex(methods)
        mean, lo, hi, what = _error_bars(part, multi_label)
        whats.add(what)
        xs = np.arange(len(methods)) + (j - (len(fusions) - 1) / 2) * width
        ax.bar(xs, mean, width, color=colours[j], label=f"fusion {fusion}", zorder=2)
        ax.errorbar(xs, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="black", capsize=3, zorder=3)
        ends += [lo, hi]
    for k, (_, r) in enumerate(unimodal.iterrows()):
        level = 100 * r["test_score_mean"]
        ax.axhline(level, color=colours[len(fusions) + k], linestyle="--", label=f"{r['method']} (unimodal)", zorder=1)
        ends.append(np.array([level]))
    values = np.concatenate(ends) if ends else np.array([])
    values = values[np.isfinite(values)]
    if len(values):  # the scale of the differences, not of 0–100: bars start below the axis
        low, high = float(values.min()), float(values.max())
        margin = 0.12 * max(high - low, 2.0)
        top = min(100.0, high + margin) if high < 100 else 100 + 0.3 * margin
        ax.set_ylim(max(0.0, low - margin), top)
    bottom, top = ax.get_ylim()
    notes = []
    classes = table["num_classes"].max() if "num_classes" in table else math.nan
    if classes == classes and not multi_label:  # not NaN; multi-label mAP has no single chance level
        chance = 100 / classes
        if bottom <= chance <= top:
            ax.axhline(chance, color="grey", linestyle=":", label="chance", zorder=1)
        else:
            notes.append(f"chance {chance:.3g}% is {'below' if chance < bottom else 'above'} the axis")
    ax.set_xticks(range(len(methods)), methods, rotation=35, ha="right", rotation_mode="anchor", fontsize=LABEL_SIZE)
    ax.tick_params(axis="y", labelsize=TICK_SIZE)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel(metric, fontsize=LABEL_SIZE)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=LEGEND_SIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.suptitle(f"{title}: {metric.split(' (')[0]} per method", fontsize=TITLE_SIZE)
    what = " / ".join(sorted(whats)) or "mean ± std over runs"
    lines = [
        "bars: mean over seeds × folds" + (" (y-axis not from 0)" if bottom > 0 else ""),
        f"error bars: {what}, clipped to [0, 100]",
    ]
    ax.set_title("\n".join([*lines, *notes]), fontsize=SUBTITLE_SIZE)
    return fig


def accuracy_bars(table: pd.DataFrame, title: str, path: Path) -> Path:
    return save(accuracy_bars_figure(table, title), path)


# ------------------------------------------------------------------------------------------------------ histories


def history_stats(records: list[dict]) -> RowHistory:
    """Per-epoch mean, sample std and run count over the runs of a row, for every numeric history column."""
    frames = [pd.DataFrame(r["history"]) for r in records if r.get("history")]
    frames = [f for f in frames if "epoch" in f]
    if not frames:
        return RowHistory(pd.DataFrame(), pd.DataFrame(), pd.Series(dtype=int))
    # flags (bool) are traces too; text columns are not
    stacked = pd.concat(
        [f.select_dtypes(include=["number", "bool"]).astype(float).assign(epoch=f["epoch"]) for f in frames]
    )
    grouped = stacked.groupby("epoch")
    return RowHistory(grouped.mean(), grouped.std(ddof=1), grouped.size())


def mean_history(records: list[dict]) -> pd.DataFrame:
    """Per-epoch mean over runs of every numeric history column."""
    return history_stats(records).mean


def _panel_title(method: str, row: RowHistory) -> str:
    if not len(row.runs) or (row.runs.max() <= 1 and row.std.empty):  # a bare mean: nothing to say about runs
        return method
    most = int(row.runs.max())
    title = f"{method} · {most} run{'s' * (most != 1)}"
    if row.runs.min() < most:  # some runs stopped early: the tail of the mean is over fewer runs
        full = row.runs.index[row.runs == most].max() + 1
        title += f", fewer after epoch {full}"
    return title


def _line(ax: Axes, row: RowHistory, col: str, scale: float, clip: tuple[float, float] | None, **style) -> Line2D:
    """The mean of ``col`` per epoch and, where runs differ, a band of ± one std around it."""
    mean = row.mean[col].dropna() * scale  # a trace recorded every few epochs is still one line
    x = mean.index + 1
    (line,) = ax.plot(x, mean, marker=".", markersize=4, linewidth=1.4, **style)
    if col in row.std and row.std[col].notna().any():
        std = row.std[col].reindex(mean.index) * scale
        low, high = mean - std, mean + std
        if clip:
            low, high = low.clip(*clip), high.clip(*clip)
        ax.fill_between(x, low, high, color=style.get("color"), alpha=BAND_ALPHA, linewidth=0)
    return line


def _panels(n: int, ncols: int = 4, size: tuple[float, float] = (3.8, 3.0), sharey: bool = False):
    """A figure with ``n`` visible panels in rows of ``ncols``."""
    plt = _pyplot()
    ncols = min(ncols, max(1, n))
    nrows = math.ceil(max(n, 1) / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size[0] * ncols, size[1] * nrows + 0.9),
        squeeze=False,
        sharey=sharey,
        layout="constrained",
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat)


def _curve_series(kind: str, h: pd.DataFrame, modalities: list[str], unimodal: bool) -> dict[str, str]:
    """label -> history column of one panel's lines. A unimodal run's one head is no fusion: its line is 'val'."""
    val = "val" if unimodal else "val fused"
    if kind == "accuracy":
        series = {
            val: "val_accuracy",
            "train (running)": "train_acc",
            **{f"val {m}": f"val_acc_{m}" for m in modalities},
        }
    else:
        series = {
            val: "val_loss",
            "train (fixed subset)": "train_eval_loss",
            **{f"val {m}": f"val_loss_{m}" for m in modalities},
            **{f"train {c[5:]} (running)": c for c in h.columns if c.startswith("loss_")},  # per-head/term losses
        }
    return {label: col for label, col in series.items() if col in h}


def _curve_style(label: str) -> str:
    """Validation solid, the model's training value dashed, a head's or a loss term's running value dotted."""
    if label.startswith("val"):
        return "-"
    return "--" if label in ("train (running)", "train (fixed subset)") else ":"


def curves_figure(
    histories: Mapping[str, History], modalities: list[str], kind: str, title: str, fusion: str | None = None
) -> Figure:
    """One panel per method: validation accuracy (kind 'accuracy') or loss (kind 'loss') of the fused head and of
    each modality's share, the training-set value, and (losses) each head's running training loss if tracked; means
    over the row's runs with ± std bands, on one y-scale for every panel so that methods compare."""
    rows = {method: _as_row(h) for method, h in histories.items()}
    unimodal = fusion == NO_FUSION
    series = {method: _curve_series(kind, row.mean, modalities, unimodal) for method, row in rows.items()}
    labels = list(dict.fromkeys(label for s in series.values() for label in s))
    colours = dict(zip(labels, _palette(len(labels))))
    scale = 100.0 if kind == "accuracy" else 1.0
    clip = (0.0, 100.0) if kind == "accuracy" else None
    values = np.concatenate(
        [scale * row.mean[c].to_numpy(float) for method, row in rows.items() for c in series[method].values()] or [[]]
    )
    y_scale = ("linear", 0.0) if kind == "accuracy" else _scale_for(values, symlog=False)
    fig, axes = _panels(len(rows), sharey=True)
    shared = [label for label in labels if all(label in s for s in series.values())]
    first: dict = {}  # label -> its line in the first panel that has it, for the figure-level legend
    for i, (ax, (method, row)) in enumerate(zip(axes, rows.items())):
        handles = {}
        for label, col in series[method].items():
            shown = label
            if y_scale[0] == "log" and (row.mean[col] <= 0).any():
                shown += " (≤ 0 not shown)"
            handles[label] = _line(ax, row, col, scale, clip, color=colours[label], linestyle=_curve_style(label))
            handles[label].set_label(shown)
            first.setdefault(label, handles[label])
        ax.set_title(_panel_title(method, row), fontsize=PANEL_TITLE_SIZE)
        ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        if i % min(4, len(rows)) == 0:
            ax.set_ylabel(
                ("accuracy (%)" if kind == "accuracy" else "loss") + _scale_note(y_scale), fontsize=LABEL_SIZE
            )
        own = [label for label in series[method] if label not in shared]
        if own:  # the lines only this panel (or some panels) has: labelled where they are drawn
            ax.legend(
                [handles[label] for label in own],
                [handles[label].get_label() for label in own],
                fontsize=LEGEND_SIZE - 1,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.2),
                ncols=2,
                frameon=False,
            )
    _apply_scale(axes[0], y_scale, values)  # shared: one call scales every panel
    if shared:
        fig.legend(
            [first[label] for label in shared],
            shared,
            loc="outside lower center",
            ncols=min(len(shared), 6),
            fontsize=LEGEND_SIZE + 1,
            title="lines in every panel (band: ± std over runs)",
            title_fontsize=LEGEND_SIZE,
        )
    fig.suptitle(title, fontsize=TITLE_SIZE)
    return fig


def curves(
    histories: Mapping[str, History],
    modalities: list[str],
    kind: str,
    title: str,
    path: Path,
    fusion: str | None = None,
) -> Path:
    return save(curves_figure(histories, modalities, kind, title, fusion), path)


def _traced(h: pd.DataFrame) -> list[str]:
    return [c for c in h.columns if c not in STANDARD_KEYS and not c.startswith(("val_", "loss_"))]


def coefficient_figure(histories: Mapping[str, History], title: str) -> Figure | None:
    """One panel per method that tracked coefficients, each coefficient's per-epoch mean with a ± std band; a panel's
    y-axis goes log or symlog where its values span orders of magnitude."""
    rows = {method: _as_row(h) for method, h in histories.items()}
    traced = {method: cols for method, row in rows.items() if (cols := _traced(row.mean))}
    if not traced:
        return None
    fig, axes = _panels(len(traced), size=(3.9, 3.3))
    for ax, (method, cols) in zip(axes, traced.items()):
        row = rows[method]
        for i, (col, colour) in enumerate(zip(cols, _palette(len(cols)))):
            _line(ax, row, col, 1.0, None, color=colour, linestyle=_linestyle(i), label=col)
        means = row.mean[cols].to_numpy(float).ravel()
        y_scale = _scale_for(means)
        _apply_scale(ax, y_scale, means)
        ax.set_title(_panel_title(method, row), fontsize=PANEL_TITLE_SIZE)
        ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
        ax.set_ylabel((cols[0] if len(cols) == 1 else "coefficient value") + _scale_note(y_scale), fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=LEGEND_SIZE - 1,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncols=2,
            frameon=False,
        )
    fig.suptitle(f"{title}\nmean over runs, band ± std", fontsize=TITLE_SIZE)
    return fig


def coefficient_traces(histories: Mapping[str, History], title: str, path: Path) -> Path | None:
    fig = coefficient_figure(histories, title)
    return save(fig, path) if fig is not None else None


def ogr_figure(histories: Mapping[tuple[str, str], History], title: str) -> Figure | None:
    """OGR between consecutive epochs (G-Blend eq. 3), one panel per fusion with a line per method, log scale."""
    by_fusion: dict[str, dict[str, pd.Series]] = {}
    for (fusion, method), h in histories.items():
        mean = _as_row(h).mean
        if "ogr" in mean and mean["ogr"].notna().any():
            by_fusion.setdefault(fusion, {})[method] = mean["ogr"].dropna()
    if not by_fusion:
        return None
    by_fusion = dict(sorted(by_fusion.items(), key=lambda item: item[0] == NO_FUSION))  # unimodal reference last
    most = max(len(lines) for lines in by_fusion.values())
    ncols = 1 if most <= 14 else 2
    height = max(3.2, 0.2 * math.ceil(most / ncols) + 1.0)
    plt = _pyplot()
    fig, axes = plt.subplots(
        len(by_fusion),
        1,
        figsize=(8.0 + 1.6 * ncols, height * len(by_fusion) + 0.6),
        squeeze=False,
        layout="constrained",
    )
    for ax, (fusion, lines) in zip(axes.flat, by_fusion.items()):
        for i, ((method, s), colour) in enumerate(zip(lines.items(), _palette(len(lines)))):
            ax.plot(s.index + 1, s.clip(lower=1e-3), marker=".", color=colour, linestyle=_linestyle(i), label=method)
        ax.set_yscale("log")
        ax.set_title("unimodal (no fusion)" if fusion == NO_FUSION else f"fusion {fusion}", fontsize=PANEL_TITLE_SIZE)
        ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
        ax.set_ylabel("OGR vs previous epoch (log scale)", fontsize=LABEL_SIZE)
        ax.tick_params(labelsize=TICK_SIZE)
        _integer_epochs(ax)
        ax.grid(alpha=0.3)
        ax.legend(
            fontsize=LEGEND_SIZE,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            borderaxespad=0.0,
            ncols=1 if len(lines) <= 14 else 2,
        )
    fig.suptitle(f"{title} (mean over runs)", fontsize=TITLE_SIZE)
    return fig


def ogr_curves(histories: Mapping[tuple[str, str], History], title: str, path: Path) -> Path | None:
    fig = ogr_figure(histories, title)
    return save(fig, path) if fig is not None else None


# ----------------------------------------------------------------------------------------------- across datasets


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
    fig.savefig(path, dpi=DPI)  # not tight_layout: it ignores the labels outside the axes
    plt.close(fig)
    return path


def slug(*parts: str) -> str:
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
            "test accuracy per method and fusion (error bars: 95% interval)",
            accuracy_bars(table, f"{dataset} · {backbone}", plots / f"{slug(dataset, backbone)}.png"),
        )
    ]
    ok = runs[(runs["status"] == "ok") & (runs["dataset"] == dataset) & (runs["backbone"] == backbone)]
    modalities = dataset_modalities(cfg, dataset)
    by_row: dict[tuple[str, str], RowHistory] = {}
    for (fusion, method), part in ok.groupby(["fusion", "method"], sort=False):
        by_row[(fusion, method)] = history_stats([records[d] for d in part["run_dir"]])
    for fusion in dict.fromkeys(f for f, _ in by_row):
        histories = {method: h for (f, method), h in by_row.items() if f == fusion}
        name = "unimodal" if fusion == NO_FUSION else fusion
        for kind in ("accuracy", "loss"):
            out.append(
                (
                    f"validation {kind} per epoch, fusion {name} (mean over runs, band ± std)",
                    curves(
                        histories,
                        modalities,
                        kind,
                        f"{dataset} · {backbone} · {name}: {kind} per epoch",
                        plots / f"{slug(dataset, backbone, name, kind)}.png",
                        fusion=fusion,
                    ),
                )
            )
        traces = coefficient_traces(
            histories,
            f"{dataset} · {backbone} · {name}: method coefficients",
            plots / f"{slug(dataset, backbone, name, 'coefficients')}.png",
        )
        if traces:
            out.append((f"method coefficients per epoch, fusion {name} (mean over runs, band ± std)", traces))
    ogr_plot = ogr_curves(
        by_row,
        f"{dataset} · {backbone}: OGR per epoch",
        plots / f"{slug(dataset, backbone, 'ogr')}.png",
    )
    if ogr_plot:
        out.append(("overfitting-to-generalisation ratio between consecutive epochs, per fusion", ogr_plot))
    return out
