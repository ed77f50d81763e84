"""Evaluation and the leaderboard: each metric and diagnostic on a hand-computed case, the statistics, and a real
aggregate of trained runs into tables and an HTML report opened in a headless browser."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from benchmark import diagnostics, leaderboard
from benchmark.config import validate_config
from benchmark.metrics import (
    average_precision,
    classification_metrics,
    expected_calibration_error,
    mean_average_precision,
)
from benchmark.models.fusions import FUSIONS
from benchmark.models.model import MultimodalModel
from tests.conftest import run_dir


# --- metrics -----------------------------------------------------------------------------------------------------
def test_average_precision_hand_case_with_ties():
    # scores 0.9(+) 0.8(-) 0.8(+) 0.1(+): thresholds {0.9}: P=1 R=1/3; {0.8}: P=2/3 R=2/3; {0.1}: P=3/4 R=1
    ap = average_precision(torch.tensor([0.9, 0.8, 0.8, 0.1]), torch.tensor([1, 0, 1, 1]))
    assert ap == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 4)
    assert math.isnan(average_precision(torch.tensor([0.5]), torch.tensor([0])))


def test_map_averages_one_vs_rest_ap_over_present_classes():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1]]))
    y = torch.tensor([0, 1, 1])
    # class 0: scores .7(+) .6(-) .2(-) -> AP 1; class 1: .2(-) .3(+) .7(+) -> ranks 1,2 both positive -> AP 1
    assert mean_average_precision(logits, y) == pytest.approx(1.0)
    y = torch.tensor([1, 0, 1])  # class 0: .7(-) .6(+) -> 1/2; class 1: .7(+) .3(-) .2(+) -> (1 + 2/3)/2
    assert mean_average_precision(logits, y) == pytest.approx((0.5 + (1 + 2 / 3) / 2) / 2)


def test_expected_calibration_error_hand_case():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right) in 10 bins: |1/2 − 0.9|·2/3 + |1 − 0.6|·1/3
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    y = torch.tensor([0, 1, 1])
    assert expected_calibration_error(torch.log(probs), y, bins=10) == pytest.approx(0.4 * 2 / 3 + 0.4 / 3)


def test_video_level_accuracy_averages_clip_probabilities():
    # video a: clips vote 0 (0.6) and 1 (0.9) -> mean p(1) = 0.65 -> 1 (right); video b: one clip, wrong
    probs = torch.tensor([[0.6, 0.4], [0.1, 0.9], [0.8, 0.2]])
    out = classification_metrics(torch.log(probs), torch.tensor([1, 1, 1]), clip_ids=["a#0", "a#1", "b#0"])
    assert out["accuracy"] == pytest.approx(1 / 3) and out["video_accuracy"] == pytest.approx(0.5)
    assert "video_accuracy" not in classification_metrics(
        torch.log(probs), torch.tensor([1, 1, 1]), clip_ids=["a", "b", "c"]
    )


# --- diagnostics ---------------------------------------------------------------------------------------------------
def test_ogr_is_equation_3():
    # O = L^V − L^T: 1.0 − 0.9 = 0.1 -> 0.7 − 0.3 = 0.4; ΔO = 0.3; ΔG = 1.0 − 0.7 = 0.3 -> OGR 1
    assert diagnostics.ogr((0.9, 0.3), (1.0, 0.7)) == pytest.approx(1.0)
    assert diagnostics.ogr((0.9, 0.5), (1.0, 0.6)) == pytest.approx(abs((0.1 - 0.1) / 0.4))
    assert math.isnan(diagnostics.ogr((1.0, 0.5), (1.0, 1.0)))


def test_masked_shapley_from_coalition_accuracies(monkeypatch):
    acc = {frozenset(): 0.1, frozenset({"audio"}): 0.5, frozenset({"visual"}): 0.3, frozenset({"audio", "visual"}): 0.9}
    monkeypatch.setattr(diagnostics, "masked_accuracies", lambda *a: acc)
    model = type("M", (), {"modalities": ["audio", "visual"]})()
    out = diagnostics.masked_shapley(model, None, None, 1)
    assert out["shapley"]["audio"] == pytest.approx(0.5 * ((0.5 - 0.1) + (0.9 - 0.3)))
    assert out["shapley"]["visual"] == pytest.approx(0.5 * ((0.3 - 0.1) + (0.9 - 0.5)))
    assert out["masked_accuracy"] == {"none": 0.1, "audio": 0.5, "visual": 0.3, "audio+visual": 0.9}


class Copy(nn.Module):
    """Feature = the input itself, so the head sees exactly what was masked."""

    out_dim = 2

    def forward(self, x):
        return x


def test_masked_accuracies_zero_the_inputs_outside_the_coalition(tmp_path):
    from benchmark.data.cache import BatchPreparer, CachedSplit

    model = MultimodalModel({"audio": Copy(), "visual": Copy()}, FUSIONS.get("concat")({"audio": 2, "visual": 2}, 2), 2)
    with torch.no_grad():  # logits = a + v
        model.fusion.head.weight.copy_(torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 1]]))
        model.fusion.head.bias.zero_()
    # sample 0 (label 1): a=[1,0], v=[0,2] -> right with all and with visual alone; sample 1: a=[0,3], v=[1,0] ->
    # all, audio
    torch.save(
        {
            "clip_id": ["s0", "s1"],
            "label": torch.tensor([1, 1]),
            "audio": torch.tensor([[1.0, 0], [0, 3]]),
            "visual": torch.tensor([[0.0, 2], [1, 0]]),
        },
        tmp_path / "clips.pt",
    )
    prep = BatchPreparer(
        {"audio": {"source": "audio"}, "visual": {"source": "audio"}},
        {"mean": [0] * 3, "std": [1] * 3},
        torch.device("cpu"),
    )
    acc = diagnostics.masked_accuracies(model, CachedSplit(tmp_path / "clips.pt"), prep, 1)
    assert acc == {
        frozenset(): 0.0,
        frozenset({"audio"}): 0.5,
        frozenset({"visual"}): 0.5,
        frozenset({"audio", "visual"}): 1.0,
    }


def test_linear_probe_separates_separable_features_and_folds_the_standardisation():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g) * 0.1 + 100.0  # large offset: standardisation matters
    x[torch.arange(60), y] += 1.0
    probe = diagnostics.fit_linear_probe(x, y, 3, weight_decay=1e-4, steps=100)
    assert (probe(x.double()).argmax(1) == y).all()


def test_model_cost_counts_parameters_and_flops_by_hand():
    class Lin(nn.Module):
        out_dim = 3

        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x)

    model = MultimodalModel({"audio": Lin(), "visual": Lin()}, FUSIONS.get("concat")({"audio": 3, "visual": 3}, 2), 2)
    cost = diagnostics.model_cost(model, {"audio": torch.randn(5, 4), "visual": torch.randn(5, 4)})
    assert cost["params"] == 2 * (4 * 3 + 3) + (6 * 2 + 2) and cost["encoder_params"] == {"audio": 15, "visual": 15}
    assert cost["flops_per_sample"] == 2 * (2 * 4 * 3) + 2 * 6 * 2  # one sample: 2·in·out per linear layer


# --- statistics ------------------------------------------------------------------------------------------------------
def _runs(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "dataset": d,
                "backbone": "b",
                "fusion": f,
                "method": m,
                "balancer": m,
                "fold": "main",
                "seed": s,
                "status": "ok",
                "test_acc": a,
                "test_score": a,
                "modality": "",
                "num_classes": 2,
            }
            for d, f, m, s, a in rows
        ]
    )


def test_paired_t_test_against_joint_by_hand():
    runs = _runs(
        [
            ("d", "concat", "joint", 0, 0.5),
            ("d", "concat", "joint", 1, 0.6),
            ("d", "concat", "mlb", 0, 0.6),
            ("d", "concat", "mlb", 1, 0.9),
        ]
    )
    out = leaderboard.paired_test(runs, ("d", "b", "concat", "mlb"), "joint")
    # differences 0.1, 0.3: t = 0.2 / (0.1414/√2) = 2 with 1 dof; p = 1 − 2·atan(2)/π (Cauchy)
    assert out["n_pairs"] == 2 and out["delta_vs_ref"] == pytest.approx(0.2)
    assert out["p_vs_ref"] == pytest.approx(1 - 2 * math.atan(2) / math.pi)
    summary = leaderboard.summarize(runs, "joint", alpha=0.05)
    mlb = summary.set_index("method").loc["mlb"]
    assert mlb["significant"] is False or not mlb["significant"]
    assert math.isnan(summary.set_index("method").loc["joint"].get("p_vs_ref", math.nan))


def test_ranks_per_dataset_and_mean_rank_across_datasets():
    runs = _runs(
        [
            ("d1", "concat", "joint", 0, 0.5),
            ("d1", "concat", "mlb", 0, 0.7),
            ("d1", "concat", "ogm", 0, 0.6),
            ("d2", "concat", "joint", 0, 0.8),
            ("d2", "concat", "mlb", 0, 0.7),
            ("d2", "concat", "ogm", 0, 0.7),
        ]
    )
    summary = leaderboard.summarize(runs)
    ranks = summary.set_index(["dataset", "method"])["rank"]
    assert ranks[("d1", "mlb")] == 1 and ranks[("d1", "ogm")] == 2 and ranks[("d1", "joint")] == 3
    # ties share the average of the ranks they span: (2 + 3) / 2
    assert ranks[("d2", "joint")] == 1 and ranks[("d2", "mlb")] == 2.5 and ranks[("d2", "ogm")] == 2.5
    mean = leaderboard.mean_ranks(summary).set_index("method")["mean rank"]
    assert mean["mlb"] == 1.75 and mean["ogm"] == 2.25 and mean["joint"] == 2.0


def test_agreement_table_groups_samples_by_unimodal_correctness():
    cfg = validate_config(yaml.safe_load(open("config.yaml")))

    def record(correct: str) -> dict:
        return {"diagnostics": {"test_correct": {"ids": "x", "best": correct}}}

    rows = [
        ("concat", "joint", "", "rj", "1100"),
        ("none", "unimodal-audio", "audio", "ra", "1010"),
        ("none", "unimodal-visual", "visual", "rv", "1001"),
    ]
    runs = pd.DataFrame(
        [
            {
                "dataset": "synthetic-av",
                "backbone": "b",
                "fusion": f,
                "method": m,
                "modality": mod,
                "fold": "main",
                "seed": 0,
                "status": "ok",
                "run_dir": d,
            }
            for f, m, mod, d, _ in rows
        ]
    )
    records = {d: record(c) for *_, d, c in rows}
    agree = leaderboard.agreement(cfg, runs, records).set_index("group")
    # sample 0: both right (mm right); 1: both wrong (mm right); 2: only audio (mm wrong); 3: only visual (mm wrong)
    assert (
        agree.loc["all unimodal right", "multimodal_acc"] == 1
        and agree.loc["all unimodal wrong", "multimodal_acc"] == 1
    )
    assert agree.loc["only audio right", "multimodal_acc"] == 0 and agree.loc["only visual right", "share"] == 0.25
    records["ra"]["diagnostics"]["test_correct"]["ids"] = "other order"
    assert leaderboard.agreement(cfg, runs, records).empty  # misaligned test sets are never compared


# --- a real aggregate, opened in a browser -------------------------------------------------------------------------
def browser() -> str | None:
    for name in (os.environ.get("BENCH_BROWSER"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


@pytest.fixture(scope="module")
def aggregated(tmp_path_factory, tiny_workspace):
    """Two seeds of joint, OGM-GE and MLB on concat plus the unimodal models, trained for two epochs and aggregated."""
    from benchmark.aggregate import aggregate
    from benchmark.run import train_run

    cwd = os.getcwd()
    os.chdir(tiny_workspace)
    try:
        cfg = yaml.safe_load((tiny_workspace / "config.yaml").read_text())
        cfg["train"]["epochs"] = 2
        cfg["grid"] = {
            "datasets": ["synthetic-av"],
            "backbones": ["small_cnn"],
            "fusions": ["concat", "gated"],
            "balancers": ["joint", "ogm_ge", "mlb", "unimodal", "mmcosine"],
            "seeds": [0, 1],
        }
        cfg = validate_config(cfg)
        from benchmark.grid import grid_runs

        runs, _ = grid_runs(cfg)
        for spec in runs:
            if not (run_dir(cfg, spec) / "metrics.json").exists():
                train_run(cfg, spec, log=lambda s: None)
        out = tmp_path_factory.mktemp("board")
        summary = aggregate(cfg, out)
        return cfg, summary, out, runs
    finally:
        os.chdir(cwd)


def test_aggregate_writes_every_table_with_diagnostics(aggregated):
    cfg, summary, out, runs = aggregated
    md = (out / "leaderboard.md").read_text()
    for text in (
        "| rank | method | fusion | runs | test acc | 95% CI | Δ vs joint | p | p Holm | macro-F1 | mAP | ECE | "
        "top-5 | acc audio | acc visual |",
        "| method | fusion | all present | without audio | without visual |",
        "What test-set selection would have claimed (optimistic",
        "## Friedman test and critical-difference diagram",
        "| method | fusion | probe audio | probe visual | Shapley audio | Shapley visual | OGR |",
        "all unimodal right",
        "only audio right",
        "## Mean rank across datasets",
        "n/a: ",
    ):
        assert text in md, text
    board = pd.read_csv(out / "leaderboard.csv", keep_default_na=False, na_values=[""])  # keep the literal "n/a"
    ogm = board[(board["method"] == "ogm_ge") & (board["fusion"] == "concat")].iloc[0]
    assert ogm["runs"] == 2 and ogm["n_pairs"] == 2 and 0 <= ogm["p_vs_ref"] <= 1 and ogm["rank"] >= 1
    assert (
        ogm["p_vs_ref"] <= ogm["p_holm"] <= 1 and ogm["test_acc_ci_lo"] <= ogm["test_acc_mean"] <= ogm["test_acc_ci_hi"]
    )
    for col in (
        "probe_audio_mean",
        "shapley_visual_mean",
        "ogr_mean",
        "flops_mean",
        "params_mean",
        "sec_per_epoch_mean",
        "peak_mem_mb_mean",
        "test_map_mean",
        "test_ece_mean",
        "masked_without_audio_mean",
        "masked_without_visual_mean",
    ):
        assert ogm[col] == ogm[col], col  # not NaN
    assert (board[board["method"] == "mmcosine"]["status"] == "n/a").any()
    tex = (out / "leaderboard.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 1 and "OGM-GE" in tex and r"$\pm$" in tex


def test_metrics_files_record_diagnostics_and_cost(aggregated, tiny_workspace):
    cfg, _, _, runs = aggregated
    spec = next(s for s in runs if s.balancer == "mlb" and s.fusion == "concat")
    m = json.loads((tiny_workspace / run_dir(cfg, spec) / "metrics.json").read_text())
    d = m["diagnostics"]
    assert set(d["linear_probe"]["test"]) == {"audio", "visual"} and set(d["shapley"]["val"]["masked_accuracy"]) == {
        "none",
        "audio",
        "visual",
        "audio+visual",
    }
    shap = d["shapley"]["test"]
    assert sum(shap["shapley"].values()) == pytest.approx(
        shap["masked_accuracy"]["audio+visual"] - shap["masked_accuracy"]["none"]
    )
    assert shap["masked_accuracy"]["audio+visual"] == pytest.approx(m["metrics"]["best"]["test"]["accuracy"])
    assert d["test_correct"]["best"].count("1") / len(d["test_correct"]["best"]) == pytest.approx(
        m["metrics"]["best"]["test"]["accuracy"]
    )
    assert "ogr" in m["history"][1] and d["ogr"]["initial"]["val_loss"] > 0
    assert m["cost"]["flops_per_sample"] > 0 and m["timing"]["peak_memory_bytes"] > 0
    assert {"loss_audio", "mAP", "ece", "acc_head_visual"} <= set(m["metrics"]["best"]["test"])


#: the cells (td.num: numbers) whose text runs onto a second line: a box of their text starts below another's end
WRAPPED_NUMBERS = """() => [...document.querySelectorAll('td.num')].filter(td => {
    const range = document.createRange();
    range.selectNodeContents(td);
    const boxes = [...range.getClientRects()].filter(r => r.width > 0 && r.height > 0);
    const firstLineBottom = Math.min(...boxes.map(r => r.bottom));
    return boxes.some(r => r.top >= firstLineBottom - 1);
}).map(td => td.innerText)"""


def test_report_renders_tables_and_images_in_a_headless_browser(aggregated, tmp_path):
    _, _, out, _ = aggregated
    exe = browser()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("no headless browser (chromium) on this CI machine; .ci/run installs one")
        pytest.skip("no chromium on this machine (set BENCH_BROWSER=/path/to/chromium)")
    from playwright.sync_api import sync_playwright

    shots = Path(os.environ.get("BENCH_SCREENSHOTS") or tmp_path)  # keep them to look at: BENCH_SCREENSHOTS=dir
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        page_browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        page = page_browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        tables = page.eval_on_selector_all("table", "ts => ts.map(t => [t.className, t.rows.length])")
        images = page.eval_on_selector_all(
            "img", "is => is.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
        )
        text = page.inner_text("body")
        guide_folded = page.is_hidden("details.guide ul")  # the column guide waits behind a click, tables first
        page.click("details.guide summary")
        guide_opened = page.is_visible("details.guide ul")
        numbers = page.eval_on_selector_all("td.num", "tds => tds.length")
        bold = page.eval_on_selector_all("table.leaderboard strong", "bs => bs.map(b => b.innerText)")
        wrapped = {"1400": page.evaluate(WRAPPED_NUMBERS)}
        page.screenshot(path=shots / "report.png", full_page=True)
        page.set_viewport_size({"width": 800, "height": 900})  # a narrow window: tables scroll, numbers stay whole
        wrapped["800"] = page.evaluate(WRAPPED_NUMBERS)
        page.screenshot(path=shots / "report-800px.png", full_page=True)
        page_browser.close()
    assert numbers > 50 and wrapped == {"1400": [], "800": []}, wrapped
    assert guide_folded and guide_opened and "`" not in text
    assert bold and all("." in b for b in bold)  # the best test accuracy (ties: each)
    assert (shots / "report.png").stat().st_size > 10_000
    classes = {c.split()[-1] for c, _ in tables}
    assert {"leaderboard", "diagnostics", "robustness", "audit", "agreement", "ranks"} <= classes
    assert all(rows > 1 for _, rows in tables)
    assert len(images) >= 5 and all(ok and width > 0 for _, ok, width in images), images
    assert any("coefficients" in src for src, _, _ in images) and any("ogr" in src for src, _, _ in images)
    # concat and gated blocks share joint, ogm_ge and mlb: the Friedman test's diagram with its p-value, or (two
    # epochs on tiny data can leave every method at chance, tied in both blocks) the reason there is none
    diagram = any(src == "plots/critical_difference.png" for src, _, _ in images)
    assert "Friedman test" in text and diagram == ("Friedman p = " in text) != ("not computed" in text)
    assert "ogm_ge" in text and "n/a" in text
