"""How the leaderboard's tables are displayed, on small hand-built runs: rows best first, the best value in bold, the
rows not significantly worse than the best marked (a paired case computed by hand), reasons and notes as footnotes,
the mean-rank table without a stray column, aligned Markdown columns, the same in the HTML report's tables, and a
leaderboard.tex that a real pdflatex compiles onto a page."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

from benchmark import leaderboard
from benchmark.config import validate_config
from benchmark.grid import NO_FUSION
from benchmark.report import table_html

REPO = Path(__file__).resolve().parents[1]
DATASET = "synthetic-av"  # a registered dataset: the Markdown and LaTeX tables read its modalities from the config
BEST = [0.80, 0.85, 0.90]  # the best row's test accuracy per seed


def _runs(rows: list[dict]) -> pd.DataFrame:
    """Per-run rows as ``load_runs`` makes them (dataset, backbone, fusion, method, seed, status, test_acc, ...)."""
    base = {"dataset": DATASET, "backbone": "small_cnn", "fusion": "concat", "fold": "main", "status": "ok"}
    base.update(modality="", num_classes=4, multi_label=False, reason="", notes="")
    out = []
    for r in rows:
        row = {**base, **r}
        row.setdefault("balancer", row["method"])
        row.setdefault("test_score", row.get("test_acc", math.nan))
        out.append(row)
    return pd.DataFrame(out)


def _below_best(method: str, deltas: list[float], **extra) -> list[dict]:
    return [{"method": method, "seed": s, "test_acc": b - d, **extra} for s, (b, d) in enumerate(zip(BEST, deltas))]


def two_sided_p(deltas: list[float]) -> float:
    """The paired t-test's p-value by hand for 3 pairs: t = mean/(sd/√3) with 2 degrees of freedom, whose
    two-sided p-value has the closed form 1 − |t|/√(2 + t²)."""
    mean = sum(deltas) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / 2)
    t = mean / (sd / math.sqrt(3))
    return 1 - abs(t) / math.sqrt(2 + t * t)


# d1: mlb and gblend below the best (ogm_ge) by 2–4 and 1–3 points; umt has one run; mmcosine cannot run (n/a).
# No row is the reference method (joint), so no row is starred: the marks here are the comparisons with the best
B_DELTAS, D_DELTAS = [0.02, 0.03, 0.04], [0.01, 0.02, 0.03]
# d2 (another backbone: a table of its own): one row 10–12 points below its best
C_DELTAS = [0.10, 0.11, 0.12]


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    rows = _below_best("mlb", B_DELTAS) + [{"method": "ogm_ge", "seed": s, "test_acc": a} for s, a in enumerate(BEST)]
    rows += _below_best(
        "gblend", D_DELTAS, notes="G-Blend weights: audio 0.1\nthe estimate's split: 64 clips; 10 classes"
    )
    rows += [{"method": "umt", "seed": 0, "test_acc": 0.5}]
    rows += [{"method": "audio-only", "balancer": "unimodal", "modality": "audio", "fusion": NO_FUSION}]
    rows[-1].update(seed=0, test_acc=0.6)
    rows += [
        {"method": "mmcosine", "fusion": "gated", "seed": 0, "status": "n/a", "reason": "MMCosine needs a late fusion"}
    ]
    other = [{"backbone": "resnet18", "method": "ogm_ge", "seed": s, "test_acc": a} for s, a in enumerate(BEST)]
    other += _below_best("mlb", C_DELTAS, backbone="resnet18")
    return _runs(rows + other)


@pytest.fixture(scope="module")
def summary(runs) -> pd.DataFrame:
    return leaderboard.summarize(runs, "joint", 0.05)


@pytest.fixture(scope="module")
def cfg() -> dict:
    return validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))


def _table(summary: pd.DataFrame, backbone: str = "small_cnn") -> pd.DataFrame:
    return summary[summary["backbone"] == backbone]


def test_rows_are_sorted_by_rank_with_unranked_rows_last(summary, runs):
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs)
    # means: ogm_ge 85, gblend 83, mlb 82, audio-only 60, umt 50; mmcosine has no run (n/a): last
    assert list(main.frame["method"]) == ["ogm_ge", "gblend", "mlb", "audio-only", "umt", "mmcosine"]
    assert list(main.frame["rank"]) == ["1", "2", "3", "4", "5", "–"]
    # the other tables of the dataset follow the same order
    diag = leaderboard.diagnostics_table(_table(summary), ["audio", "visual"])
    assert list(diag["method"]) == ["ogm_ge", "gblend", "mlb", "audio-only", "umt"]


def test_best_value_is_bold_in_every_format(summary, runs, cfg):
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs)
    assert main.bold == {(0, "test acc")}
    assert main.frame.loc[0, "test acc"] == "85.0 ± 5.0"
    md = leaderboard.to_markdown(summary, cfg, runs=runs)
    assert "| 1 | ogm_ge | concat | 3 | **85.0 ± 5.0** |" in md
    assert "<strong>85.0 ± 5.0</strong>" in table_html(main, "leaderboard")
    assert r"\textbf{\boldmath 85.0 $\pm$ 5.0}" in leaderboard.to_latex(summary, cfg, runs)


def test_rows_not_significantly_worse_than_the_best_are_marked_after_holm(summary, runs):
    # d1: two rows have ≥ 2 runs paired with the best: mlb (B) and gblend (D); Holm over those 2 tests
    p_b, p_d = two_sided_p(B_DELTAS), two_sided_p(D_DELTAS)  # 1 − 5.196/√29 = 0.0351 and 1 − 3.464/√14 = 0.0742
    assert p_b == pytest.approx(0.035099, abs=1e-5) and p_d == pytest.approx(0.074180, abs=1e-5)
    # mlb's raw p is below 0.05, but Holm multiplies the smaller p by 2: 0.0702; gblend's: max(0.0702, 0.0742 × 1)
    assert p_b < 0.05 <= 2 * p_b <= max(2 * p_b, p_d)
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs).frame.set_index("method")
    assert main.loc["gblend", "test acc"] == "83.0 ± 4.0" + leaderboard.NOT_WORSE_MARK
    assert main.loc["mlb", "test acc"] == "82.0 ± 4.0" + leaderboard.NOT_WORSE_MARK  # not after Holm
    assert main.loc["umt", "test acc"] == "50.0"  # one run: cannot be tested, not marked
    legend = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs).legend
    assert "Holm-adjusted over the table's 2 comparisons with the best" in legend
    assert "Not tested against the best (fewer than 2 runs paired with its runs): audio-only, umt · concat." in legend
    # d2: a single comparison, p = 1 − 19.05/√365 = 0.0027: significantly worse, so no mark
    assert two_sided_p(C_DELTAS) == pytest.approx(0.002743, abs=1e-5)
    other = leaderboard.main_table(_table(summary, "resnet18"), ["audio", "visual"], "joint", runs).frame
    assert list(other["test acc"]) == ["85.0 ± 5.0", "74.0 ± 4.0"]
    # without per-run scores nothing is tested, and the legend does not claim it
    plain = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint")
    assert not any(leaderboard.NOT_WORSE_MARK in v for v in plain.frame["test acc"])
    assert leaderboard.NOT_WORSE_MARK not in plain.legend and plain.bold == {(0, "test acc")}


def test_the_best_row_keeps_its_significance_star_outside_the_bold(runs):
    better = _runs(
        [{"method": "joint", "seed": s, "test_acc": a} for s, a in enumerate(BEST)]
        + _below_best("ogm_ge", [-0.05, -0.07, -0.06])  # 6 points above joint: p = 1 − 10.39/√110 = 0.009, starred
    )
    table = leaderboard.summarize(better, "joint", 0.05)
    main = leaderboard.main_table(table, [], "joint", better)
    assert main.frame.loc[0, "method"] == "ogm_ge" and main.frame.loc[0, "test acc"] == "91.0 ± 5.6 *"
    assert leaderboard._markdown(main)[2].startswith("| 1 | ogm_ge | concat | 3 | **91.0 ± 5.6** * |")
    assert leaderboard.split_marks("95.1 ± 1.3† *") == ("95.1 ± 1.3", "† *")


def test_reasons_and_notes_are_footnotes_not_status_text(summary, runs, cfg):
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs)
    status = main.frame.set_index("method")["status"]
    assert status["mmcosine"] == "n/a [3]" and status["gblend"] == "ok [1, 2]" and status["ogm_ge"] == "ok"
    assert main.notes == [  # one footnote a note, even where a note holds '; '
        "G-Blend weights: audio 0.1",
        "the estimate's split: 64 clips; 10 classes",
        "n/a: MMCosine needs a late fusion",
    ]
    assert all(len(s) <= 12 for s in status)  # a short word and references: the numbers keep the width
    md = leaderboard.to_markdown(summary, cfg, runs=runs)
    assert "[3] n/a: MMCosine needs a late fusion" in md and "n/a: MMCosine" not in md.split("[3] n/a")[0]
    html = table_html(main, "leaderboard")
    assert "MMCosine needs" not in html and "<td class='text'>n/a [3]</td>" in html
    assert leaderboard._refs([1, 2, 3, 5, 7, 8]) == "[1–3, 5, 7, 8]"


def test_mean_rank_table_has_no_empty_column_or_stray_header(summary):
    ranks = leaderboard.rank_table(summary)
    assert list(ranks.frame.columns) == ["backbone", "fusion", "method", DATASET, "mean rank", "datasets"]
    assert ranks.frame.iloc[0].tolist() == ["resnet18", "concat", "ogm_ge", "1", "1.00", "1"]
    html = table_html(ranks, "ranks")
    headers = re.findall(r"<th class=[^>]*>(.*?)</th>", html)
    assert headers == list(ranks.frame.columns) and all(headers)
    for row in re.findall(r"<tr>(.*?)</tr>", html)[1:]:  # every body row has a cell under every header
        assert len(re.findall(r"<td", row)) == len(headers)
    assert ("resnet18" in html) and "<strong>1.00</strong>" in html  # the best mean rank of each backbone


def test_markdown_aligns_numbers_right_and_names_left(summary, runs):
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs)
    lines = leaderboard._markdown(main)
    cells = dict(zip(main.frame.columns, lines[1].strip("|").split("|")))
    assert cells["rank"] == cells["runs"] == cells["test acc"] == cells["95% CI"] == cells["p Holm"] == "---:"
    assert cells["method"] == cells["fusion"] == cells["status"] == ":---"
    assert lines[0].startswith("| rank | method | fusion | runs | test acc | 95% CI | Δ vs joint | p | p Holm |")


def test_html_cells_are_numeric_or_text_alike_in_every_table(summary, runs):
    main = leaderboard.main_table(_table(summary), ["audio", "visual"], "joint", runs)
    html = table_html(main, "leaderboard")
    assert 'class="dataframe leaderboard"' in html
    assert "<td class='text'>gblend</td>" in html and "<td class='num'>2</td>" in html
    # a marked column keeps a box for the marks in every cell, so that numbers line up
    assert "<td class='num'>83.0 ± 4.0<span class='mark'>†</span></td>" in html
    assert "<td class='num'>60.0<span class='mark'></span></td>" in html
    robust = table_html(pd.DataFrame({"method": ["a"], "fusion": ["concat"], "all present": ["85.0 ± 7.1"]}), "r")
    assert "<td class='text'>a</td><td class='text'>concat</td><td class='num'>85.0 ± 7.1</td>" in robust


def test_latex_names_methods_for_papers_and_keeps_the_main_columns(summary, runs, cfg):
    tex = leaderboard.to_latex(summary, cfg, runs)
    assert tex.count(r"\begin{table}") == 2 and r"\centering" in tex and r"\caption{" in tex
    assert all(rule in tex for rule in (r"\toprule", r"\midrule", r"\bottomrule"))
    assert "OGM-GE" in tex and "G-Blend" in tex and "Audio only" in tex and r"ogm\_ge" not in tex
    # rank, method, runs (fusion: concat alone, in the caption), test acc (value, marks), 95% CI, Δ, p Holm
    assert r"\begin{tabular}{rlrr@{}lrrr}" in tex and "(fusion concat)" in tex
    assert "macro-F1" not in tex and "status" not in tex  # main metrics only
    assert "Not shown (no finished runs): mmcosine $\\cdot$ gated" in tex
    assert leaderboard.display_name("my_method") == "my-method"  # no class: a readable form of the id
    assert leaderboard.display_name("joint", "joint [audio+visual]").endswith(" [audio+visual]")
    assert leaderboard.latex_escape("a_b & 5% < 6 †") == r"a\_b \& 5\% $<$ 6 $^\dagger$"


def pdflatex() -> str | None:
    return shutil.which(os.environ.get("BENCH_PDFLATEX", "pdflatex"))


def test_leaderboard_tex_compiles_with_pdflatex_and_fits_the_page(summary, runs, cfg, tmp_path):
    exe = pdflatex()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("no pdflatex on this CI machine; scripts/system-deps.sh installs it")
        pytest.skip("no pdflatex on this machine (scripts/system-deps.sh installs it; or set BENCH_PDFLATEX)")
    (tmp_path / "leaderboard.tex").write_text(leaderboard.to_latex(summary, cfg, runs))
    (tmp_path / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n\\input{leaderboard.tex}\n"
        "\\end{document}\n"
    )
    done = subprocess.run(
        [exe, "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert done.returncode == 0, done.stdout[-3000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
    assert "Overfull \\hbox" not in log, log  # no column runs past the text width
    assert "Missing character" not in log and "Undefined control sequence" not in log
