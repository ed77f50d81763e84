"""The report's figures, checked on the matplotlib Figure built from small hand-made tables and histories."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgba

from benchmark import plots
from benchmark.grid import NO_FUSION
from tests.conftest import default_config

MODALITIES = ["audio", "visual"]


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plots._pyplot().close("all")


def _table(ci: bool) -> pd.DataFrame:
    """Three fused methods in 80–95% with wide 2-seed stds (mean ± std crosses 100), and one unimodal row."""
    rows = [
        ("joint", "concat", 0.82, 0.10, 0.78, 0.86),
        ("ogm_ge", "concat", 0.88, 0.08, 0.84, 0.92),
        ("mlb", "concat", 0.95, 0.09, 0.93, 0.97),
        ("audio-only", NO_FUSION, 0.80, 0.01, 0.77, 0.83),
    ]
    table = pd.DataFrame(
        [
            {
                "method": m,
                "fusion": f,
                "runs": 2,
                "num_classes": 8,
                "multi_label": False,
                "test_score_mean": mean,
                "test_score_std": std,
                "test_acc_ci_lo": lo,
                "test_acc_ci_hi": hi,
            }
            for m, f, mean, std, lo, hi in rows
        ]
    )
    return table if ci else table.drop(columns=["test_acc_ci_lo", "test_acc_ci_hi"])


def _error_bar_ends(ax) -> np.ndarray:
    """(lower, upper) of every drawn error bar."""
    ends = []
    for container in ax.containers:
        if hasattr(container, "has_yerr") and container.has_yerr:
            for segment in container.lines[2][0].get_segments():
                ends.append(sorted(segment[:, 1]))
    return np.array(ends)


def _no_overlap(fig, legend, ax) -> bool:
    fig.canvas.draw()
    a, b = legend.get_window_extent(), ax.get_window_extent()
    return a.x0 >= b.x1 - 1 or a.x1 <= b.x0 + 1 or a.y0 >= b.y1 - 1 or a.y1 <= b.y0 + 1


@pytest.mark.parametrize("ci", [False, True])
def test_bars_zoom_on_the_data_and_clip_intervals_to_the_metric_range(ci):
    fig = plots.accuracy_bars_figure(_table(ci), "data")
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert 40 < bottom < 77  # not from 0; the unimodal line at 80 and the CI at 77 in view
    assert top < 102 and max(t for t in ax.get_yticks() if t <= top) <= 100  # room for a cap at 100, no tick past it
    ends = _error_bar_ends(ax)
    assert len(ends) == 3 and (ends >= 0).all() and (ends <= 100).all()
    if ci:  # the bootstrap interval, not mean ± std
        np.testing.assert_allclose(ends, [[78, 86], [84, 92], [93, 97]])
        assert "95% bootstrap interval" in ax.get_title()
    else:
        assert ends[2, 1] == pytest.approx(100) and ends[0, 0] == pytest.approx(72)  # 95 + 9 and 82 - 10, clipped
        assert "std" in ax.get_title()
    assert _no_overlap(fig, ax.get_legend(), ax)


def _records(values: list[list[float]], extra: dict[str, list[float]] | None = None) -> list[dict]:
    """One record per run; run i's val accuracy per epoch is values[i] (runs may differ in length)."""
    records = []
    for i, accs in enumerate(values):
        history = [
            {
                "epoch": e,
                "val_accuracy": a,
                "val_loss": 2 - a,
                "train_acc": a,
                "train_eval_loss": 1 - a,
                "val_acc_audio": a / 2,
                "val_loss_audio": 2.5 - a,
                "ogr": 1.0 + e,
                **{k: v[e] + i for k, v in (extra or {}).items()},
            }
            for e, a in enumerate(accs)
        ]
        records.append({"history": history})
    return records


def test_history_stats_over_runs_of_different_lengths():
    row = plots.history_stats(_records([[0.2, 0.5, 0.7], [0.4, 0.6]]))
    assert list(row.runs) == [2, 2, 1]
    assert row.mean["val_accuracy"].tolist() == pytest.approx([0.3, 0.55, 0.7])
    assert row.std["val_accuracy"].iloc[:2].tolist() == pytest.approx([0.2 / math.sqrt(2), 0.1 / math.sqrt(2)])
    assert math.isnan(row.std["val_accuracy"].iloc[2])  # one run reached epoch 3: no spread
    assert plots.mean_history(_records([[0.2], [0.4]]))["val_accuracy"].tolist() == pytest.approx([0.3])


def _histories() -> dict[str, plots.RowHistory]:
    return {
        "joint": plots.history_stats(_records([[0.2, 0.5, 0.7], [0.4, 0.6, 0.8]])),
        "mlb": plots.history_stats(
            _records([[0.5, 0.9, 0.95, 0.97], [0.7, 0.9]], {"loss_uni_audio": [1, 0.5, 0.2, 0.1]})
        ),
    }


def test_curves_share_y_per_figure_have_integer_epochs_and_std_bands():
    fig = plots.curves_figure(_histories(), MODALITIES, "accuracy", "acc", fusion="concat")
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2 and len({ax.get_ylim() for ax in axes}) == 1
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
    # joint's val accuracy band: mean ± std of (20, 40), (50, 60), (70, 80) in %
    bands = [c for c in axes[0].collections if isinstance(c, PolyCollection)]
    assert bands
    ys = np.concatenate([p.vertices[:, 1] for band in bands for p in band.get_paths()])
    for a, b in ((20, 40), (50, 60), (70, 80)):
        std = abs(a - b) / math.sqrt(2)  # sample std of two runs
        for y in ((a + b) / 2 - std, (a + b) / 2 + std):
            assert np.isclose(ys, y).any()


def test_every_line_label_is_in_a_legend():
    fig = plots.curves_figure(_histories(), MODALITIES, "loss", "loss", fusion="concat")
    drawn = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    shown = {t.get_text() for legend in legends for t in legend.get_texts()}
    assert "train uni_audio (running)" in drawn and drawn <= shown


def test_unimodal_panels_say_val_not_fused():
    histories = {"audio-only": plots.history_stats(_records([[0.2, 0.5], [0.4, 0.6]]))}
    for kind in ("accuracy", "loss"):
        fig = plots.curves_figure(histories, [], kind, "uni", fusion=NO_FUSION)
        labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
        labels |= {t.get_text() for legend in fig.legends for t in legend.get_texts()}
        assert "val" in labels and not any("fused" in label for label in labels)


def test_ogr_one_panel_per_fusion_with_distinct_colours():
    histories = {
        (fusion, f"method{i}"): plots.history_stats(_records([[0.1 * i, 0.2, 0.3]]))
        for fusion in ("concat", "film", NO_FUSION)
        for i in range(13)
    }
    fig = plots.ogr_figure(histories, "ogr")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    for ax in axes:
        colours = [to_rgba(line.get_color()) for line in ax.get_lines()]
        assert len(colours) == 13 and len(set(colours)) == 13
        assert ax.get_xlabel() == "epoch" and "OGR" in ax.get_ylabel()
        assert _no_overlap(fig, ax.get_legend(), ax)


def test_coefficient_panels_have_y_labels_and_legends_outside():
    histories = {
        "ogm_ge": plots.history_stats(_records([[0.2, 0.5], [0.4, 0.6]], {"rho_audio": [2, 1], "k_audio": [0.1, 0.5]})),
        "mbsd": plots.history_stats(_records([[0.2, 0.5], [0.4, 0.6]], {"weight": [0.3, 0.2]})),
        "joint": plots.history_stats(_records([[0.2, 0.5]])),  # tracks nothing: no panel
    }
    fig = plots.coefficient_figure(histories, "coefficients")
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 2
    assert axes[0].get_ylabel() == "coefficient value" and axes[1].get_ylabel() == "weight"
    for ax in axes:
        assert ax.get_legend() is not None and _no_overlap(fig, ax.get_legend(), ax)


def test_dataset_plots_writes_every_figure(tmp_path):
    rows = {}
    for fusion, method in (("concat", "joint"), ("concat", "ogm_ge"), (NO_FUSION, "audio-only")):
        for seed in range(2):
            rows[f"{fusion}/{method}/{seed}"] = (fusion, method, [0.3 + 0.1 * seed, 0.6, 0.8])
    records = {d: _records([accs], {"k_audio": [1, 2, 3]})[0] for d, (_, _, accs) in rows.items()}
    runs = pd.DataFrame(
        [
            {"status": "ok", "dataset": "synthetic-av", "backbone": "small_cnn", "fusion": f, "method": m, "run_dir": d}
            for d, (f, m, _) in rows.items()
        ]
    )
    out = plots.dataset_plots(default_config(), _table(True), runs, records, "synthetic-av", "small_cnn", tmp_path)
    assert len(out) == 1 + 2 * 3 + 1  # bars; accuracy, loss and coefficients per fusion; OGR
    assert all(path.exists() and path.stat().st_size > 0 for _, path in out)
