"""The leaderboard's statistics on hand-computed cases: ranks from exact correct counts (ties averaged), Holm's
correction of the tests against the reference, bootstrap intervals over test clips, the Friedman test with Nemenyi's
critical difference, the missing-modality table and the test-selection audit; then a whole aggregate of fabricated
metrics files into the Markdown, CSV and HTML outputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import friedmanchisquare, ttest_rel

from benchmark import leaderboard
from benchmark.config import validate_config
from benchmark.grid import NO_FUSION, RunSpec, grid_runs
from benchmark.settings import NUMERICS_VERSION, Resolver

REPO = Path(__file__).resolve().parents[1]


def f32(x: float) -> float:
    """A value as the metrics files store it: float32 precision (the source of float noise in means)."""
    return float(np.float32(x))


def bits(right: int, n: int) -> str:
    return "1" * right + "0" * (n - right)


def _runs(rows: list[dict]) -> pd.DataFrame:
    """Per-run rows as ``load_runs`` makes them; each dict gives at least dataset, method, seed, test_acc."""
    base = {
        "backbone": "b",
        "fusion": "concat",
        "fold": "main",
        "status": "ok",
        "modality": "",
        "num_classes": 4,
        "multi_label": False,
    }
    out = []
    for r in rows:
        row = {**base, **r}
        row.setdefault("balancer", row["method"])
        row.setdefault("test_score", row["test_acc"])
        out.append(row)
    return pd.DataFrame(out)


# --- 1. ranks from exact counts --------------------------------------------------------------------------------------
def test_ranks_come_from_exact_counts_and_ties_share_the_average_rank():
    n = 15
    rows = [
        {"dataset": "d", "method": "A", "seed": 0, "right": 14, "test_acc": f32(14 / n)},
        {"dataset": "d", "method": "B", "seed": 0, "right": 13, "test_acc": f32(13 / n)},  # float32: 0.86666667461
        {"dataset": "d", "method": "C", "seed": 0, "right": 13, "test_acc": 13 / n},  # float64: 0.86666666667
        {"dataset": "d", "method": "E", "seed": 0, "right": 12, "test_acc": f32(12 / n)},  # mean of 12 and 14 = 13
        {"dataset": "d", "method": "E", "seed": 1, "right": 14, "test_acc": f32(14 / n) + 1e-9},
        {"dataset": "d", "method": "D", "seed": 0, "right": 12, "test_acc": f32(12 / n)},
    ]
    for r in rows:
        r.update(correct_bits=bits(r.pop("right"), n), correct_ids="t")
    summary = leaderboard.summarize(_runs(rows)).set_index("method")
    # the float means of B, C and E differ in the last digits: a float ranking would split the tie 2, 3, 4
    assert len(set(summary.loc[["B", "C", "E"], "test_acc_mean"])) == 3
    # counts: A 14, B 13, C 13, E (12 + 14) / 2 = 13, D 12 -> B, C, E share ranks 2, 3, 4: (2 + 3 + 4) / 3 = 3
    assert summary["rank"].to_dict() == {"A": 1.0, "B": 3.0, "C": 3.0, "E": 3.0, "D": 5.0}
    assert summary.loc["B", "rank_score"] == summary.loc["E", "rank_score"] == 13 / n
    main, _ = leaderboard.leaderboard_table(summary.reset_index(), [], "A")
    assert list(main["rank"]) == ["1", "3", "3", "3", "5"]
    # a pair of ties: 2.5 is shown as such
    two = leaderboard.summarize(_runs([{**rows[0], "method": "X"}, rows[1], rows[2]])).set_index("method")
    assert two["rank"].to_dict() == {"X": 1.0, "B": 2.5, "C": 2.5}
    main, _ = leaderboard.leaderboard_table(two.reset_index(), [], "X")
    assert list(main["rank"]) == ["1", "2.5", "2.5"]


def test_rank_without_per_clip_records_rounds_the_mean_score():
    runs = _runs(
        [
            {"dataset": "d", "method": "A", "seed": 0, "test_acc": 0.7},
            {"dataset": "d", "method": "B", "seed": 0, "test_acc": 0.7 + 3e-9},  # float noise, no bitstrings
            {"dataset": "d", "method": "C", "seed": 0, "test_acc": 0.7 + 2e-6},  # a real difference at 1e-6
        ]
    )
    ranks = leaderboard.summarize(runs).set_index("method")["rank"]
    assert ranks.to_dict() == {"C": 1.0, "A": 2.5, "B": 2.5}


# --- 2. Holm ---------------------------------------------------------------------------------------------------------
def test_holm_adjustment_by_hand():
    # m = 4 valid p-values; sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04 -> running max
    adjusted = leaderboard.holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[0] == pytest.approx(0.03) and adjusted[4] == pytest.approx(0.02)
    assert adjusted[1] == pytest.approx(0.06) and adjusted[2] == pytest.approx(0.06)  # 0.04 lifted to the max
    assert math.isnan(adjusted[3])
    assert leaderboard.holm([0.6, 0.7]) == [1.0, 1.0]  # 1.2 capped at 1; the max keeps the order
    assert leaderboard.holm([]) == []


def test_summary_holm_adjusts_within_each_table_and_stars_on_the_adjusted_p():
    joint = [0.50, 0.60, 0.70]
    deltas = {
        "X": [0.10, 0.12, 0.11],  # p ≈ 0.003
        "W": [0.05, 0.07, 0.09],  # p ≈ 0.026: below 0.05 raw, not after Holm with 4 tests
        "Y": [0.05, 0.01, 0.09],
        "Z": [-0.02, 0.03, 0.00],
    }
    rows = [{"dataset": "d1", "method": "joint", "seed": s, "test_acc": a} for s, a in enumerate(joint)]
    rows += [
        {"dataset": "d1", "method": m, "seed": s, "test_acc": a + d}
        for m, ds in deltas.items()
        for s, (a, d) in enumerate(zip(joint, ds))
    ]
    # another dataset: a table of its own, with a single comparison (Holm leaves it as it is)
    rows += [{"dataset": "d2", "method": "joint", "seed": s, "test_acc": a} for s, a in enumerate(joint)]
    rows += [
        {"dataset": "d2", "method": "W", "seed": s, "test_acc": a + d}
        for s, (a, d) in enumerate(zip(joint, deltas["W"]))
    ]
    summary = leaderboard.summarize(_runs(rows), "joint", alpha=0.05).set_index(["dataset", "method"])

    def p(m: str) -> float:
        return ttest_rel(np.add(joint, deltas[m]), joint).pvalue

    raw = {m: p(m) for m in deltas}
    order = sorted(raw, key=raw.get)
    assert order == ["X", "W", "Y", "Z"]
    expected, running = {}, 0.0
    for i, m in enumerate(order):  # Holm by hand: (m − i)·p, running max, capped at 1
        running = max(running, min(1.0, (4 - i) * raw[m]))
        expected[m] = running
    for m in deltas:
        assert summary.loc[("d1", m), "p_vs_ref"] == pytest.approx(raw[m])
        assert summary.loc[("d1", m), "p_holm"] == pytest.approx(expected[m])
    assert raw["W"] < 0.05 < expected["W"]
    assert summary.loc[("d1", "X"), "significant"] and not summary.loc[("d1", "W"), "significant"]
    assert summary.loc[("d2", "W"), "p_holm"] == pytest.approx(raw["W"]) and summary.loc[("d2", "W"), "significant"]
    assert math.isnan(summary.loc[("d1", "joint"), "p_holm"])
    main, _ = leaderboard.leaderboard_table(summary.loc["d1"].reset_index().assign(dataset="d1"), [], "joint")
    main = main.set_index("method")
    assert main.loc["X", "test acc"].endswith(" *") and not main.loc["W", "test acc"].endswith("*")
    assert main.loc["W", "p"] == f"{raw['W']:.3f}" and main.loc["W", "p Holm"] == f"{expected['W']:.3f}"


# --- 3. bootstrap ----------------------------------------------------------------------------------------------------
def test_bootstrap_interval_contains_the_mean_is_reproducible_and_has_the_binomial_width():
    clips = "1110" * 100  # 300 of 400 right
    lo, hi = leaderboard.bootstrap_ci([("t", clips)])
    assert lo < 0.75 < hi
    assert (lo, hi) == leaderboard.bootstrap_ci([("t", clips)])  # fixed seed: the same interval every time
    assert (lo, hi) != leaderboard.bootstrap_ci([("t", clips)], seed=1)
    # percentile interval of a proportion ≈ ±1.96·sqrt(p(1 − p)/n) = ±0.0424
    assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.75 * 0.25 / 400), rel=0.15)
    assert leaderboard.bootstrap_ci([("t", "1" * 50)]) == (1.0, 1.0)
    assert all(math.isnan(v) for v in leaderboard.bootstrap_ci([]))


def test_bootstrap_resamples_the_same_clips_for_every_seed_of_a_row():
    clips = "1101001110" * 20
    flipped = "".join("0" if c == "1" else "1" for c in clips)
    # each resample takes the same clips from both runs: one run's right clips are the other's wrong ones, so every
    # resample's mean over the two runs is exactly 0.5 (independent draws would spread)
    assert leaderboard.bootstrap_ci([("t", clips), ("t", flipped)]) == (0.5, 0.5)
    # a row of two identical runs has the interval of one
    assert leaderboard.bootstrap_ci([("t", clips), ("t", clips)]) == leaderboard.bootstrap_ci([("t", clips)])
    # two runs, means 0.75 and 0.65: the interval of the pooled row contains their mean 0.70
    lo, hi = leaderboard.bootstrap_ci([("t", "1110" * 50), ("t", "1101100111" * 20)])
    assert lo < 0.70 < hi
    with pytest.raises(ValueError):
        leaderboard.bootstrap_ci([("t", "11"), ("t", "111")])


def test_summary_interval_is_over_the_rows_runs_and_shown_beside_the_mean():
    n = 200
    a, b = "1110" * 50, "1101100111" * 20
    runs = _runs(
        [
            {
                "dataset": "d",
                "method": "joint",
                "seed": 0,
                "test_acc": f32(0.75),
                "correct_bits": a,
                "correct_ids": "t",
            },
            {"dataset": "d", "method": "joint", "seed": 1, "test_acc": f32(0.7), "correct_bits": b, "correct_ids": "t"},
            {"dataset": "d", "method": "old", "seed": 0, "test_acc": 0.5},  # a run without per-clip records
        ]
    )
    assert len(a) == len(b) == n
    summary = leaderboard.summarize(runs).set_index("method")
    lo, hi = summary.loc["joint", ["test_acc_ci_lo", "test_acc_ci_hi"]]
    assert (lo, hi) == leaderboard.bootstrap_ci([("t", a), ("t", b)])
    assert lo < summary.loc["joint", "test_acc_mean"] < hi
    assert math.isnan(summary.loc["old", "test_acc_ci_lo"])
    main, _ = leaderboard.leaderboard_table(summary.reset_index(), [], "joint")
    assert main.iloc[0]["95% CI"] == f"[{100 * lo:.1f}, {100 * hi:.1f}]" and main.iloc[1]["95% CI"] == "–"
    assert list(main.columns[4:9]) == ["test acc", "95% CI", "Δ vs joint", "p", "p Holm"]


# --- 4. Friedman and the critical-difference diagram ---------------------------------------------------------------
COUNTS = {  # correct clips of 10 per block (dataset, fusion) and method
    ("d1", "concat"): {"joint": 7, "ogm": 8, "mlb": 9, "gblend": 5, "extra": 9},
    ("d1", "sum"): {"joint": 6, "ogm": 6, "mlb": 9, "gblend": 5},  # joint and ogm tie
    ("d2", "concat"): {"joint": 8, "ogm": 7, "mlb": 9, "gblend": 6},
    ("d2", "sum"): {"joint": 7, "ogm": 9, "mlb": 8, "gblend": 7},  # joint and gblend tie
}


def _block_runs(counts: dict = COUNTS) -> pd.DataFrame:
    rows = []
    for (dataset, fusion), methods in counts.items():
        for i, (method, right) in enumerate(methods.items()):
            noisy = f32(right / 10) if i % 2 else right / 10  # equal counts, unequal floats
            rows.append(
                {
                    "dataset": dataset,
                    "fusion": fusion,
                    "method": method,
                    "seed": 0,
                    "test_acc": noisy,
                    "correct_bits": bits(right, 10),
                    "correct_ids": dataset,
                }
            )
        rows.append(  # a unimodal row: not a fused block, never in the test
            {"dataset": dataset, "fusion": NO_FUSION, "method": "audio-only", "seed": 0, "test_acc": 0.4}
        )
    return _runs(rows)


def test_friedman_matches_scipy_on_exact_counts_with_nemenyi_critical_difference(tmp_path):
    summary = leaderboard.summarize(_block_runs())
    result = leaderboard.friedman(summary, alpha=0.05)
    assert result["applicable"]
    assert result["methods"] == ["joint", "ogm", "mlb", "gblend"] and result["dropped"] == ["extra"]
    assert len(result["blocks"]) == 4 and not any(NO_FUSION in b.split(" · ")[-1:] for b in result["blocks"])
    per_method = {m: [COUNTS[b][m] for b in COUNTS] for m in result["methods"]}
    expected = friedmanchisquare(*per_method.values())
    assert result["statistic"] == pytest.approx(expected.statistic) and result["p"] == pytest.approx(expected.pvalue)
    noisy = summary[summary["fusion"] != NO_FUSION].pivot_table(
        index=["dataset", "fusion"], columns="method", values="test_acc_mean"
    )
    assert friedmanchisquare(*(noisy[m] for m in result["methods"])).pvalue != pytest.approx(expected.pvalue)
    # mean ranks by hand (1 = best; ties averaged): joint 3, 2.5, 2, 3.5; ogm 2, 2.5, 3, 1; mlb 1, 1, 1, 2; gblend 4,
    # 4, 4, 3.5
    assert result["mean_ranks"].to_dict() == {"mlb": 1.25, "ogm": 2.125, "joint": 2.75, "gblend": 3.875}
    # CD = q_0.05(k = 4)/√2 · sqrt(k(k + 1)/(6N)) with Demšar's q = 2.569, N = 4 blocks
    assert result["cd"] == pytest.approx(2.569 * math.sqrt(4 * 5 / (6 * 4)), abs=1e-3)
    nemenyi = result["nemenyi"]
    assert list(nemenyi.index) == list(nemenyi.columns) == result["methods"]
    assert np.allclose(nemenyi.to_numpy(), nemenyi.to_numpy().T) and (np.diag(nemenyi) == 1).all()
    assert nemenyi.loc["mlb", "gblend"] < 0.05 < nemenyi.loc["mlb", "ogm"]  # 2.625 apart > CD; 0.875 apart < CD
    text = leaderboard.friedman_text(result)
    assert f"p = {expected.pvalue:.4g}" in text and "CD = 2.345" in text and "extra" in text
    from benchmark.plots import critical_difference_diagram

    path = critical_difference_diagram(result, tmp_path / "cd.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_friedman_says_why_when_there_are_too_few_blocks_or_methods():
    one_block = leaderboard.summarize(_block_runs({("d1", "concat"): COUNTS[("d1", "concat")]}))
    result = leaderboard.friedman(one_block)
    assert not result["applicable"] and "1 block(s)" in result["reason"]
    two_methods = {b: {m: c for m, c in v.items() if m in ("joint", "mlb")} for b, v in COUNTS.items()}
    result = leaderboard.friedman(leaderboard.summarize(_block_runs(two_methods)))
    assert not result["applicable"] and "2 such method(s)" in result["reason"]
    assert "not computed" in leaderboard.friedman_text(result)
    ties = {b: {"joint": 5, "ogm": 5, "mlb": 5} for b in COUNTS}
    result = leaderboard.friedman(leaderboard.summarize(_block_runs(ties)))
    assert not result["applicable"] and "ties" in result["reason"]


# --- 5. missing-modality robustness --------------------------------------------------------------------------------
def record(
    identity: str = "x",
    right: int = 18,
    n: int = 20,
    masked: dict | None = None,
    audit: dict | None = None,
    modalities: tuple[str, ...] = ("audio", "visual"),
    best_epoch: int = 1,
    ids: str = "test-ids",
    audit_in_diagnostics: bool = False,
    absent_input: str | None = None,
) -> dict:
    """A metrics file as a finished run writes it (the fields the leaderboard and report read)."""
    acc = f32(right / n)
    test = {"accuracy": acc, "macro_f1": acc, "mAP": acc, "ece": 0.1, **{f"acc_{m}": acc / 2 for m in modalities}}
    history = [
        {
            "epoch": e,
            "lr": 0.01,
            "train_loss": 1.0 - 0.1 * e,
            "train_acc": 0.5 + 0.1 * e,
            "val_loss": 1.0 - 0.1 * e,
            "val_accuracy": 0.5 + 0.1 * e,
            "train_eval_loss": 1.0 - 0.1 * e,
        }
        for e in range(3)
    ]
    out = {
        "version": 2,
        "status": "ok",
        "run": {"modalities": list(modalities), "num_classes": 4, "multi_label": False},
        "notes": [],
        "config_hash": "fabricated",
        "identity": {"kind": "run", "identity": identity, "numerics_version": NUMERICS_VERSION},
        "selection": {"best_epoch": best_epoch, "epochs": 3, "epochs_trained": 3},
        "metrics": {"best": {"val": {"accuracy": acc}, "test": test}, "last": {"val": {"accuracy": acc}, "test": test}},
        "diagnostics": {"test_correct": {"ids": ids, "best": bits(right, n), "last": bits(right, n)}},
        "cost": {"params": 1000, "flops_per_sample": 2e6},
        "timing": {"seconds_per_epoch": [1.0, 1.0, 1.0], "peak_memory_bytes": 2**20},
        "history": history,
        "provenance": {"git_commit": "fabricated"},
        "settings": {},
    }
    if masked is not None:
        out["diagnostics"]["shapley"] = {"test": {"masked_accuracy": masked}}
    if audit is not None:  # top level, as first planned, or among the diagnostics, as benchmark.run writes it
        (out["diagnostics"] if audit_in_diagnostics else out)["audit"] = audit
    if absent_input is not None:
        out["settings"] = {"train": {"absent_input": absent_input}}
    return out


def test_masked_columns_name_each_absent_modality():
    masked = {"none": 0.125, "audio": 0.5185, "visual": 0.1667, "audio+visual": 0.9722}
    row = leaderboard.masked_columns({"shapley": {"test": {"masked_accuracy": masked}}}, ["audio", "visual"])
    assert row == {"masked_all": 0.9722, "masked_without_audio": 0.1667, "masked_without_visual": 0.5185}
    three = {"audio+visual+text": 0.9, "visual+text": 0.3, "audio+text": 0.4, "audio+visual": 0.7}
    row = leaderboard.masked_columns({"shapley": {"test": {"masked_accuracy": three}}}, ["audio", "visual", "text"])
    assert row == {
        "masked_all": 0.9,
        "masked_without_audio": 0.3,
        "masked_without_visual": 0.4,
        "masked_without_text": 0.7,
    }
    assert leaderboard.masked_columns({}, ["audio", "visual"]) == {}  # shapley off: no columns, n/a cells


def test_robustness_table_is_the_mean_over_seeds_with_each_modality_absent():
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)
    masks = [
        {"none": 0.1, "audio": 0.6, "visual": 0.3, "audio+visual": 0.9},
        {"none": 0.1, "audio": 0.5, "visual": 0.2, "audio+visual": 0.8},
    ]
    rows = []
    for seed, masked in enumerate(masks):
        cols = leaderboard.metric_columns(record(masked=masked), spec, ["audio", "visual"])
        rows.append({"dataset": "d", "method": "joint", "seed": seed, **cols})
    rows.append({"dataset": "d", "method": "audio-only", "fusion": NO_FUSION, "seed": 0, "test_acc": 0.5})
    summary = leaderboard.summarize(_runs(rows))
    table = leaderboard.robustness_table(summary, ["audio", "visual"])
    assert table.to_dict("records") == [  # without audio = visual alone: 0.3, 0.2; without visual = audio alone
        {
            "method": "joint",
            "fusion": "concat",
            "all present": "85.0 ± 7.1",
            "without audio": "25.0 ± 7.1",
            "without visual": "55.0 ± 7.1",
        }
    ]
    assert summary.set_index("method").loc["joint", "masked_without_audio_mean"] == pytest.approx(0.25)
    assert "its input set to zero" in leaderboard.robustness_caption(summary)  # runs without train.absent_input
    no_shapley = leaderboard.summarize(_runs([{"dataset": "d", "method": "joint", "seed": 0, "test_acc": 0.5}]))
    assert leaderboard.robustness_table(no_shapley, ["audio", "visual"]).empty


# --- 6. the test-selection audit -------------------------------------------------------------------------------------
AUDIT = {
    "rule": "test accuracy per epoch; the best epoch on test (never used for selection)",
    "test_accuracy_per_epoch": [0.5, 0.9, 0.95],
    "test_selected": {"epoch": 2, "accuracy": 0.95},
}


def test_audit_gap_is_test_selected_minus_validation_selected_and_never_ranks():
    assert leaderboard.audit_columns(AUDIT, 0.90) == {
        "audit_test_selected_acc": 0.95,
        "audit_test_selected_epoch": 2,
        "audit_gap": pytest.approx(0.05),
    }
    assert leaderboard.audit_columns(None, 0.9) == {} and leaderboard.audit_columns({"rule": "x"}, 0.9) == {}
    spec = RunSpec("synthetic-av", "small_cnn", "concat", "joint", 0)

    def rows(method: str, audits: list) -> list[dict]:
        return [
            {
                "dataset": "d",
                "method": method,
                "seed": s,
                **leaderboard.metric_columns(record(right=18, audit=a), spec, ["audio", "visual"]),
            }
            for s, a in enumerate(audits)
        ]

    # where benchmark.run writes it: diagnostics.audit
    inside = leaderboard.metric_columns(record(right=18, audit=AUDIT, audit_in_diagnostics=True), spec, [])
    assert inside["audit_gap"] == pytest.approx(0.95 - f32(0.9)) and inside["audit_test_selected_epoch"] == 2
    # the validation-selected test accuracy is 18/20 = 0.9 in every run; 'audited' claims 0.95 and 0.99 on test
    better = {**AUDIT, "test_selected": {"epoch": 0, "accuracy": 0.99}}
    summary = leaderboard.summarize(
        _runs(rows("audited", [AUDIT, better]) + rows("partly", [AUDIT, None]) + rows("plain", [None, None]))
    ).set_index("method")
    assert summary.loc["audited", "audit_gap_mean"] == pytest.approx((0.05 + 0.09) / 2)
    assert summary.loc["partly", "audit_runs"] == 1 and summary.loc["plain", "audit_runs"] == 0
    assert summary["rank"].to_dict() == {"audited": 2.0, "partly": 2.0, "plain": 2.0}  # the audit never ranks
    table = leaderboard.audit_table(summary.reset_index()).set_index("method")
    assert table.loc["audited", "test acc (val-selected)"] == "90.0 ± 0.0"
    assert table.loc["audited", "test acc (test-selected, optimistic)"] == "97.0 ± 2.8"
    assert table.loc["audited", "gap (optimistic)"] == "+7.0 ± 2.8"
    assert table.loc["audited", "epoch (test-selected)"] == "1.0 ± 1.4"
    assert table.loc["partly", "gap (optimistic)"] == "+5.0" and table.loc["partly", "audited runs"] == "1/2"
    assert (table.loc["plain", ["test acc (test-selected, optimistic)", "gap (optimistic)"]] == "n/a").all()
    assert table.loc["plain", "audited runs"] == "0/2"


# --- 7. a whole aggregate of fabricated metrics files ----------------------------------------------------------------
def fabricated_config(backbones: list[str], fusions: list[str]) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["grid"] = {
        "datasets": ["synthetic-av"],
        "backbones": backbones,
        "fusions": fusions,
        "balancers": ["joint", "ogm_ge", "mlb", "unimodal"],
        "seeds": [0, 1],
    }
    return validate_config(cfg)


#: correct clips of 20 per (backbone, fusion, method) and seed
RIGHT = {
    ("small_cnn", "concat"): {"joint": (15, 17), "ogm_ge": (16, 16), "mlb": (18, 19)},
    ("small_cnn", "sum"): {"joint": (14, 16), "ogm_ge": (17, 17), "mlb": (15, 15)},  # joint and mlb tie at 15
    ("resnet18", "concat"): {"joint": (12, 12), "ogm_ge": (13, 14), "mlb": (17, 18)},
    ("resnet18", "sum"): {"joint": (16, 16), "ogm_ge": (12, 13), "mlb": (18, 20)},
}


def write_fabricated_runs(cfg: dict, root: Path) -> None:
    runs, _ = grid_runs(cfg)
    resolver = Resolver(cfg)
    for spec in runs:
        resolved = resolver.run(spec)
        if spec.modality:  # unimodal baselines
            rec = record(resolved.identity, right=10, modalities=(spec.modality,))
        else:
            right = RIGHT[(spec.backbone, spec.fusion)][spec.balancer][spec.seed]
            masked = {"none": 0.25, "audio": 0.5 + 0.05 * spec.seed, "visual": 0.3, "audio+visual": right / 20}
            audit = None
            if spec.balancer == "joint":  # the validation-selected epoch 1; on test epoch 2 was 1 clip better
                audit = {
                    "rule": "fabricated",
                    "test_accuracy_per_epoch": [0.5, right / 20, (right + 1) / 20],
                    "test_selected": {"epoch": 2, "accuracy": (right + 1) / 20},
                }
            rec = record(
                resolved.identity, right=right, masked=masked, audit=audit, audit_in_diagnostics=spec.seed == 1
            )
            rec["settings"] = {"train": {"absent_input": "mean"}}
        path = root / resolved.path / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(rec))


def test_aggregate_of_fabricated_runs_writes_the_new_tables_and_the_cd_diagram(tmp_path):
    from benchmark.aggregate import aggregate

    cfg = fabricated_config(["small_cnn", "resnet18"], ["concat", "sum"])
    write_fabricated_runs(cfg, tmp_path)
    out = tmp_path / "board"
    aggregate(cfg, out, root=tmp_path)
    md = (out / "leaderboard.md").read_text()
    assert "| rank | method | fusion | runs | test acc | 95% CI | Δ vs joint | p | p Holm | macro-F1 |" in md
    assert "| method | fusion | all present | without audio | without visual |" in md
    assert "one modality absent (its input replaced by the training split's mean input)" in md
    # joint · concat · small_cnn: all present 15/20, 17/20; without audio = visual alone 0.3; without visual = audio
    # alone 0.5, 0.55
    assert "| joint | concat | 80.0 ± 7.1 | 30.0 ± 0.0 | 52.5 ± 3.5 |" in md
    assert "| joint | concat | 80.0 ± 7.1 | 1.0 ± 0.0 | 85.0 ± 7.1 | 2.0 ± 0.0 | +5.0 ± 0.0 | 2/2 |" in md
    assert "| ogm_ge | concat | 80.0 ± 0.0 | 1.0 ± 0.0 | n/a | n/a | n/a | 0/2 |" in md
    # small_cnn ranks: means mlb·concat 18.5, ogm_ge·sum 17, ogm_ge·concat 16, joint·concat 16, joint·sum 15,
    # mlb·sum 15 (of 20), unimodal 10 -> ties 3.5 and 5.5
    board = pd.read_csv(out / "leaderboard.csv")
    small = board[board["backbone"] == "small_cnn"].set_index(["fusion", "method"])["rank"]
    assert small[("concat", "mlb")] == 1 and small[("sum", "ogm_ge")] == 2
    assert small[("concat", "ogm_ge")] == small[("concat", "joint")] == 3.5
    assert small[("sum", "joint")] == small[("sum", "mlb")] == 5.5
    assert {"p_holm", "test_acc_ci_lo", "test_acc_ci_hi", "masked_without_audio_mean", "audit_gap_mean"} <= set(board)
    ok = board[board["runs"] > 0]
    assert ((ok["test_acc_ci_lo"] <= ok["test_acc_mean"]) & (ok["test_acc_mean"] <= ok["test_acc_ci_hi"])).all()
    # the Friedman test over the 4 blocks, on the mean counts per block
    means = {m: [sum(RIGHT[b][m]) / 40 for b in RIGHT] for m in ("joint", "ogm_ge", "mlb")}
    p = friedmanchisquare(*means.values()).pvalue
    assert f"p = {p:.4g}" in md and "![critical-difference diagram](plots/critical_difference.png)" in md
    page = (out / "report.html").read_text()
    assert "src='plots/critical_difference.png'" in page and f"Friedman p = {p:.4g}" in page
    assert (out / "plots" / "critical_difference.png").stat().st_size > 5000
    assert 'class="dataframe robustness"' in page and 'class="dataframe audit"' in page
    assert "optimistic" in page and "p Holm" in page and "95% CI" in page
    tex = (out / "leaderboard.tex").read_text()
    assert "95\\% CI" in tex and "p Holm" in tex


def test_aggregate_with_one_block_says_there_is_no_friedman_test(tmp_path):
    from benchmark.aggregate import aggregate

    cfg = fabricated_config(["small_cnn"], ["concat"])
    write_fabricated_runs(cfg, tmp_path)
    out = tmp_path / "board"
    aggregate(cfg, out, root=tmp_path)
    md = (out / "leaderboard.md").read_text()
    assert "Friedman test across blocks: not computed — needs at least 2 dataset × backbone × fusion blocks" in md
    assert "critical_difference.png" not in md
    page = (out / "report.html").read_text()
    assert "not computed" in page and "critical_difference.png" not in page
    assert not (out / "plots" / "critical_difference.png").exists()
