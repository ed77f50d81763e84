"""Aggregate metrics files into the leaderboard: CSV, Markdown, LaTeX, and (``benchmark.report``) plots and HTML.

Numbers are test metrics of each run's best-validation checkpoint, mean ± sample standard deviation over the
runs of a row (seeds × folds), with a bootstrap confidence interval over test clips. Per dataset × backbone every
row gets a rank by mean test accuracy computed from exact correct counts (ties share the average rank); the mean
rank across datasets is a table of its own, and a Friedman test with Nemenyi's critical difference compares the
methods over every dataset × backbone × fusion block. Each method is compared with the reference method (``joint``)
of the same dataset, backbone and fusion by a paired t-test over matching (seed, fold) runs, Holm-corrected over the
comparisons of one dataset × backbone table. Beside them: test accuracy with each modality absent, and what
selecting the epoch on the test set would have claimed (optimistic, never used for ranking). Everything is rebuilt
from the metrics files; combinations a method cannot run appear as n/a rows with the reason, failed runs with
theirs, runs without a metrics file as 'not run'.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.grid import NO_FUSION, RunSpec, dataset_modalities, grid_runs
from benchmark.settings import NUMERICS_VERSION, Resolver

NA = "n/a"

#: bootstrap over test clips: resamples, confidence level, seed (the resamples of one test set are the same for
#: every row, derived from this seed and the test set's ids digest)
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0
_BOOTSTRAP_CHUNK = 50  # resamples drawn at a time (fixed, so the draws never depend on the test set's size)
#: resolution to which a mean score without per-clip records (or mAP) is rounded before ranking: float noise
SCORE_DECIMALS = 6
#: the figure of the Friedman/Nemenyi comparison in the report's plots folder
CD_FIGURE = "critical_difference.png"


#: joins a row's method notes in one cell (notes themselves contain '; ')
NOTE_SEP = "\n"


class StaleResult(ValueError):
    """A metrics file whose recorded identity is not the one the config gives for its run."""


def check_identity(record: dict, expected: str, path: Path) -> None:
    """Refuse a result made with other settings than the config asks for (a table never mixes settings)."""
    recorded = (record.get("identity") or {}).get("identity")
    if recorded != expected:
        raise StaleResult(
            f"{path} records identity {recorded or 'none (made before runs had identities)'}, but the "
            f"config gives {expected} for this run: it was made with other settings. Move or delete it "
            "and let the DAG train the run again (python -m benchmark prune lists unused runs)"
        )
    version = record["identity"].get("numerics_version")
    if version != NUMERICS_VERSION:
        raise StaleResult(f"{path} was made by numerics version {version}, this harness is version {NUMERICS_VERSION}")


KEYS = ["dataset", "backbone", "fusion", "method"]


def display_method(spec_or_method: RunSpec | str) -> str:
    method = spec_or_method.method if isinstance(spec_or_method, RunSpec) else spec_or_method
    balancer, _, modality = method.partition("-")
    if "+" in modality:  # a subset of the dataset's modalities
        return f"{balancer} [{modality}]"
    return f"{modality}-only" if modality else balancer


def hyperparameter_text(params: dict) -> str:
    """'lr 0.0123, alpha 0.43' from {'train.optimizer.lr': 0.0123, 'balancer.alpha': 0.43}."""
    return ", ".join(
        f"{name.rsplit('.', 1)[-1]} {value:.3g}" if isinstance(value, float) else f"{name.rsplit('.', 1)[-1]} {value}"
        for name, value in params.items()
    )


def tuning_columns(m: dict) -> dict:
    """The tuning a run's hyperparameters came from (none: the config's values, i.e. the papers' defaults)."""
    tuning = m.get("settings", {}).get("tuning")
    if not tuning:
        return {"tuning": "paper defaults"}
    search = "a grid" if tuning.get("strategy") == "grid" else "random search"
    return {
        "tuning": "tuned",
        "hyperparameters": hyperparameter_text(tuning["chosen"]),
        "trials": tuning["trials"],
        "search": search,
    }


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else math.nan


def metric_columns(m: dict, spec: RunSpec, modalities: list[str]) -> dict:
    """The flat numbers of one finished run (test metrics of the best-validation checkpoint unless named)."""
    best, last = m["metrics"]["best"], m["metrics"]["last"]
    test = best["test"]
    multi_label = m["run"].get("multi_label", False)
    row = {
        "best_epoch": m["selection"]["best_epoch"],
        "val_acc": best["val"]["accuracy"],
        "test_acc": test["accuracy"],
        "test_score": test["mAP"] if multi_label else test["accuracy"],
        "test_f1": test.get("macro_f1"),
        "test_map": test.get("mAP"),
        "test_mauc": test.get("mAUC"),
        "test_ece": test.get("ece"),
        "test_top5": test.get("top5"),
        "test_video_acc": test.get("video_accuracy"),
        "test_video_top5": test.get("video_top5"),
        "test_video_map": test.get("video_mAP"),
        "test_video_mauc": test.get("video_mAUC"),
        "test_acc_last": last["test"]["accuracy"],
    }
    diagnostics = m.get("diagnostics", {})
    probes = diagnostics.get("linear_probe", {}).get("test", {})
    shapley = diagnostics.get("shapley", {}).get("test", {}).get("shapley", {})
    for mod in modalities:
        if spec.modality == mod:
            row[f"test_acc_{mod}"] = test["accuracy"]
        elif f"acc_{mod}" in test:
            row[f"test_acc_{mod}"] = test[f"acc_{mod}"]
        if mod in probes:
            row[f"probe_{mod}"] = probes[mod]
        if mod in shapley:
            row[f"shapley_{mod}"] = shapley[mod]
    correct = diagnostics.get("test_correct", {})
    row["correct_bits"] = correct.get("best")  # per-test-clip correctness of the selected checkpoint
    row["correct_ids"] = correct.get("ids")
    masked = masked_columns(diagnostics, m["run"].get("modalities") or modalities)
    row.update(masked, **({"absent_input": absent_input(m)} if masked else {}))
    row.update(audit_columns(m.get("audit") or diagnostics.get("audit"), test["accuracy"]))
    row["ogr"] = diagnostics.get("ogr", {}).get("from_initial_to_best")
    cost, timing = m.get("cost", {}), m.get("timing", {})
    row["params"] = cost.get("params")
    row["flops"] = cost.get("flops_per_sample")
    row["sec_per_epoch"] = _mean(timing.get("seconds_per_epoch", []))
    row["peak_mem_mb"] = timing["peak_memory_bytes"] / 2**20 if timing.get("peak_memory_bytes") else None
    return {k: (math.nan if v is None else v) for k, v in row.items()}


def masked_columns(diagnostics: dict, model_modalities: list[str]) -> dict:
    """Test accuracy with every modality present and with each one absent, from the Shapley diagnostic's coalition
    accuracies (keys 'audio+visual', 'visual', ..., 'none' in the model's modality order)."""
    masked = diagnostics.get("shapley", {}).get("test", {}).get("masked_accuracy") or {}
    if not masked:
        return {}

    def coalition(mods: list[str]) -> str:
        return "+".join(mods) or "none"

    row = {"masked_all": masked.get(coalition(model_modalities))}
    for mod in model_modalities:
        row[f"masked_without_{mod}"] = masked.get(coalition([x for x in model_modalities if x != mod]))
    return row


def absent_input(m: dict) -> str:
    """What an absent modality's input was in a run's coalition accuracies: ``train.absent_input`` (mean or zero);
    runs from before that setting zeroed the input."""
    return (m.get("settings", {}).get("train") or {}).get("absent_input", "zero")


def audit_columns(audit: dict | None, selected_test_acc: float) -> dict:
    """What selecting the epoch on the test set would have claimed (``audit.test_selected``, the record's top-level
    ``audit`` or ``diagnostics.audit``), and its gap to the validation-selected checkpoint's test accuracy;
    optimistic by construction, never used for selection or ranks."""
    chosen = (audit or {}).get("test_selected") or {}
    if chosen.get("accuracy") is None:
        return {}
    return {
        "audit_test_selected_acc": chosen["accuracy"],
        "audit_test_selected_epoch": chosen.get("epoch"),
        "audit_gap": chosen["accuracy"] - selected_test_acc,
    }


def load_runs(cfg: dict, root: Path = Path(".")) -> tuple[pd.DataFrame, dict[str, dict]]:
    """One row per scheduled run (with its metrics) or per inapplicable combination, and each finished run's
    metrics record keyed by its run directory. A metrics file whose identity is not the config's is an error."""
    runs, skipped = grid_runs(cfg)
    resolver = Resolver(cfg)
    rows, records = [], {}
    for spec in runs:
        resolved = resolver.run(spec)
        row = {
            "dataset": spec.dataset,
            "backbone": spec.backbone,
            "fusion": spec.fusion,
            "method": display_method(spec),
            "balancer": spec.balancer,
            "modality": spec.modality or "",
            "fold": spec.fold,
            "seed": spec.seed,
            "run_dir": str(resolved.path),
            "identity": resolved.identity,
        }
        path = root / resolved.path / "metrics.json"
        if not path.exists():
            rows.append({**row, "status": "not run", "reason": f"no {path}"})
            continue
        m = json.loads(path.read_text())
        check_identity(m, resolved.identity, path)
        records[str(resolved.path)] = m
        row.update(
            status=m["status"],
            reason=m.get("reason", ""),
            num_classes=m["run"].get("num_classes"),
            multi_label=bool(m["run"].get("multi_label", False)),
            notes=NOTE_SEP.join(m.get("notes", [])),
            config_hash=m["config_hash"],
            git_commit=m["provenance"]["git_commit"],
        )
        if m["status"] == "ok":
            row.update(metric_columns(m, spec, dataset_modalities(cfg, spec.dataset)))
        row.update(tuning_columns(m))
        rows.append(row)
    for spec, reason in skipped:
        rows.append(
            {
                "dataset": spec.dataset,
                "backbone": spec.backbone,
                "fusion": spec.fusion,
                "method": display_method(spec),
                "balancer": spec.balancer,
                "modality": "",
                "fold": spec.fold,
                "seed": spec.seed,
                "status": NA,
                "reason": reason,
            }
        )
    return pd.DataFrame(rows), records


def paired_test(runs: pd.DataFrame, key: tuple, reference: str) -> dict:
    """Paired t-test (two-sided) of a row's primary test metric (accuracy; mAP for multi-label data) against the
    reference method's on the same dataset, backbone, fusion and modalities, over the (seed, fold) pairs both have."""
    from scipy.stats import ttest_rel

    dataset, backbone, fusion, method = key
    ok = runs[
        (runs["status"] == "ok")
        & (runs["dataset"] == dataset)
        & (runs["backbone"] == backbone)
        & (runs["fusion"] == fusion)
    ]
    mine = ok[ok["method"] == method].set_index(["seed", "fold"])["test_score"]
    ref = ok[ok["method"] == reference].set_index(["seed", "fold"])["test_score"]
    both = mine.index.intersection(ref.index)
    out = {"n_pairs": len(both), "delta_vs_ref": math.nan, "p_vs_ref": math.nan}
    if len(both):
        a, b = mine.loc[both].to_numpy(), ref.loc[both].to_numpy()
        out["delta_vs_ref"] = float((a - b).mean())
        if len(both) > 1 and (a - b).std() > 0:
            out["p_vs_ref"] = float(ttest_rel(a, b).pvalue)
        elif len(both) > 1:  # every pair differs by the same amount (or not at all): no variance to test against
            out["p_vs_ref"] = 1.0 if (a == b).all() else math.nan
    return out


def holm(pvalues) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes max over j ≤ i of min(1, (m − j + 1)·p_(j));
    NaN p-values (no test) stay NaN and are not counted in m."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    running = 0.0
    for i, j in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (len(valid) - i) * p[j]))
        out[j] = running
    return out.tolist()


def _bits(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) == ord("1")


def bootstrap_ci(
    correct: list[tuple[str, str]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """Percentile bootstrap interval of a row's mean test accuracy over its runs, resampling test clips.

    ``correct`` holds one (ids digest, correctness bitstring) per run. Each resample draws the clips of a test set
    with replacement — the same draw for every run (seed) on that test set, and for every row, as the draw comes
    from ``seed`` and the ids digest — and the row's value is the mean over its runs of their accuracy on it."""
    if not correct:
        return math.nan, math.nan
    by_test_set: dict[str, list[np.ndarray]] = {}
    for ids, bits in correct:
        by_test_set.setdefault(ids, []).append(_bits(bits))
    pooled = np.zeros(resamples)
    for ids, arrays in by_test_set.items():
        if len({len(a) for a in arrays}) != 1:
            raise ValueError(f"runs on test set {ids} have correctness records of different lengths")
        per_clip = np.mean(arrays, axis=0)  # mean over this test set's runs of each clip's correctness
        n = len(per_clip)
        rng = np.random.default_rng([seed, int(hashlib.sha256(str(ids).encode()).hexdigest()[:16], 16)])
        for start in range(0, resamples, _BOOTSTRAP_CHUNK):
            size = min(_BOOTSTRAP_CHUNK, resamples - start)
            pooled[start : start + size] += len(arrays) * per_clip[rng.integers(0, n, size=(size, n))].mean(axis=1)
    pooled /= len(correct)
    lo, hi = np.percentile(pooled, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _correct_records(ok: pd.DataFrame) -> list[tuple[str, str]] | None:
    """(ids digest, bitstring) of every finished run of a row, or None when some run has no per-clip record."""
    if not len(ok) or "correct_bits" not in ok:
        return None
    pairs = list(zip(ok.get("correct_ids", pd.Series([None] * len(ok), index=ok.index)), ok["correct_bits"]))
    if not all(isinstance(bits, str) and bits for _, bits in pairs):
        return None
    return [(ids if isinstance(ids, str) else "", bits) for ids, bits in pairs]


def rank_score(ok: pd.DataFrame, multi_label: bool = False) -> float:
    """The value a row is ranked by: its mean test accuracy as an exact fraction of correct counts (then as the
    nearest float, so equal counts are equal), or the mean test score rounded to ``SCORE_DECIMALS`` where runs have
    no per-clip records and for multi-label data (mAP has no count)."""
    correct = None if multi_label else _correct_records(ok)
    if correct:
        return float(sum(Fraction(bits.count("1"), len(bits)) for _, bits in correct) / len(correct))
    values = ok["test_score"].dropna() if "test_score" in ok else pd.Series(dtype=float)
    return round(float(values.mean()), SCORE_DECIMALS) if len(values) else math.nan


def summarize(runs: pd.DataFrame, reference: str = "joint", alpha: float = 0.05) -> pd.DataFrame:
    """Mean ± std over seeds (and folds) per dataset × backbone × fusion × method, in grid order, with the rank per
    dataset × backbone (exact counts, ties averaged), the bootstrap interval over test clips and the paired test
    against ``reference`` (Holm-adjusted over each dataset × backbone's comparisons; ``significant`` uses the
    adjusted p-value)."""
    metric_cols = [
        c
        for c in runs.columns
        if c.startswith(("test_", "val_", "probe_", "shapley_", "masked_", "audit_"))
        or c in ("best_epoch", "ogr", "params", "flops", "sec_per_epoch", "peak_mem_mb")
    ]
    out = []
    for key, group in runs.groupby(KEYS, sort=False):
        ok = group[group["status"] == "ok"]
        row = dict(zip(KEYS, key))
        row["balancer"] = group["balancer"].iloc[0]
        row["folds"] = ok["fold"].nunique() if len(ok) else 0
        row["fold_list"] = ",".join(sorted(set(group["fold"])))
        row["num_classes"] = group["num_classes"].max() if "num_classes" in group else math.nan
        row["multi_label"] = bool(group["multi_label"].fillna(False).any()) if "multi_label" in group else False
        row["runs"] = len(ok)
        statuses = sorted(set(group["status"]) - {"ok"})
        row["status"] = "ok" if not statuses else ("ok, " if len(ok) else "") + ", ".join(statuses)
        reasons = sorted({r for r in group.get("reason", pd.Series(dtype=str)).dropna() if r})
        row["reason"] = "; ".join(reasons)
        notes = sorted(
            {n for joined in group.get("notes", pd.Series(dtype=str)).dropna() for n in joined.split(NOTE_SEP) if n}
        )
        row["notes"] = NOTE_SEP.join(notes)
        absent = ok["absent_input"].dropna() if "absent_input" in ok else pd.Series(dtype=object)
        row["absent_input"] = ", ".join(sorted(set(absent))) or None
        for col in ("tuning", "hyperparameters", "trials", "search"):  # one tuning per group: the same for all its runs
            values = ok[col].dropna() if col in ok else pd.Series(dtype=object)
            row[col] = values.iloc[0] if len(values) else None
        for col in metric_cols:
            values = ok[col].dropna() if col in ok else pd.Series(dtype=float)
            row[f"{col}_mean"] = values.mean() if len(values) else math.nan
            row[f"{col}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        row["rank_score"] = rank_score(ok, row["multi_label"])
        correct = _correct_records(ok)
        row["test_acc_ci_lo"], row["test_acc_ci_hi"] = bootstrap_ci(correct) if correct else (math.nan, math.nan)
        row["audit_runs"] = int(ok["audit_gap"].notna().sum()) if "audit_gap" in ok else 0
        modality = group["modality"].iloc[0]
        ref = display_method(f"{reference}-{modality}") if "+" in modality else reference  # same modalities
        if row["method"] != ref and row["fusion"] != NO_FUSION and len(ok):
            row.update(paired_test(runs, key, ref))
            row["significant"] = False  # decided on the Holm-adjusted p-value below
        out.append(row)
    summary = pd.DataFrame(out)
    if "p_vs_ref" in summary:
        summary["p_holm"] = math.nan
        for _, part in summary.groupby(["dataset", "backbone"], sort=False):
            summary.loc[part.index, "p_holm"] = holm(part["p_vs_ref"])
        tested = summary["p_vs_ref"].notna()
        summary.loc[tested, "significant"] = summary.loc[tested, "p_holm"] < alpha
    if "rank_score" in summary:
        summary["rank"] = summary.groupby(["dataset", "backbone"], sort=False)["rank_score"].rank(
            ascending=False, method="average"
        )
    return summary


def mean_ranks(summary: pd.DataFrame) -> pd.DataFrame:
    """Per backbone × fusion × method: its rank on each dataset and the mean over the datasets it ran on."""
    if "rank" not in summary:
        return pd.DataFrame()
    ranked = summary.dropna(subset=["rank"])
    table = ranked.pivot_table(index=["backbone", "fusion", "method"], columns="dataset", values="rank", sort=False)
    table["mean rank"] = table.mean(axis=1)
    table["datasets"] = table.drop(columns="mean rank").notna().sum(axis=1)
    return table.reset_index().sort_values(["backbone", "mean rank"], kind="stable")


def friedman(summary: pd.DataFrame, alpha: float = 0.05) -> dict:
    """Friedman test of the methods (treatments) over the experiment's dataset × backbone × fusion blocks (unimodal
    rows excluded), on the methods that have a score in every block, with Nemenyi's pairwise post-hoc p-values and
    critical difference (Demšar 2006) for the critical-difference diagram.

    Returns ``applicable`` and, when it is not, ``reason``; otherwise also ``statistic``, ``p``, ``mean_ranks``
    (rank 1 = best, ties averaged, best first), ``nemenyi`` (p-values, methods × methods), ``cd`` and the
    ``blocks``, ``methods`` and ``dropped`` (methods missing from some block)."""
    out: dict = {"applicable": False, "alpha": alpha, "blocks": [], "methods": [], "dropped": []}
    if "rank_score" not in summary or summary.empty:
        out["reason"] = "no finished runs"
        return out
    fused = summary[(summary["fusion"] != NO_FUSION) & summary["rank_score"].notna()]
    blocks = ["dataset", "backbone", "fusion"]
    table = fused.pivot_table(index=blocks, columns="method", values="rank_score", sort=False)
    table = table[list(dict.fromkeys(fused["method"]))] if len(fused) else table
    common = [m for m in table.columns if table[m].notna().all()]
    out["blocks"] = [" · ".join(map(str, b)) for b in table.index]
    out["methods"] = common
    out["dropped"] = [m for m in table.columns if m not in common]
    if len(table) < 2 or len(common) < 3:
        out["reason"] = (
            f"needs at least 2 dataset × backbone × fusion blocks and 3 methods present in every block; this "
            f"experiment has {len(table)} block(s) and {len(common)} such method(s)"
        )
        return out
    from scipy.stats import friedmanchisquare, studentized_range

    values = table[common]
    if (values.nunique(axis=1) == 1).all():
        out["reason"] = "every method ties in every block: no ranking to test"
        return out
    statistic, p = friedmanchisquare(*(values[m].to_numpy() for m in common))
    import scikit_posthocs

    k, n = len(common), len(values)
    nemenyi = scikit_posthocs.posthoc_nemenyi_friedman(values.reset_index(drop=True))
    q = studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    out.update(
        applicable=True,
        statistic=float(statistic),
        p=float(p),
        mean_ranks=values.rank(axis=1, ascending=False, method="average").mean().sort_values(kind="stable"),
        nemenyi=nemenyi.loc[common, common],
        cd=float(q * math.sqrt(k * (k + 1) / (6 * n))),
    )
    return out


def friedman_text(result: dict) -> str:
    """One paragraph: what was compared and the test's outcome (or why there is none)."""
    if not result["applicable"]:
        return f"Friedman test across blocks: not computed — {result['reason']}."
    ranks = ", ".join(f"{m} {r:.2f}" for m, r in result["mean_ranks"].items())
    dropped = f" Left out (missing from some block): {', '.join(result['dropped'])}." if result["dropped"] else ""
    return (
        f"Friedman test over {len(result['blocks'])} dataset × backbone × fusion blocks and the "
        f"{len(result['methods'])} methods present in every block (ranked by mean test score per block): "
        f"χ²_F = {result['statistic']:.3f}, p = {result['p']:.4g}. Nemenyi critical difference at α = "
        f"{result['alpha']:g}: CD = {result['cd']:.3f}; methods whose mean ranks differ by less are joined in the "
        f"diagram. Mean ranks (1 = best): {ranks}.{dropped}"
    )


def agreement(cfg: dict, runs: pd.DataFrame, records: dict[str, dict]) -> pd.DataFrame:
    """The MLB paper's analysis: test samples grouped by which unimodal models (same dataset, backbone, fold and
    seed) classify them correctly, and the multimodal model's accuracy inside each group, pooled over runs."""
    ok = runs[runs["status"] == "ok"]
    uni = {
        (r.dataset, r.backbone, r.fold, r.seed, r.modality): records[r.run_dir] for r in ok.itertuples() if r.modality
    }
    counts: dict[tuple, list[int]] = {}
    for r in ok[(ok["modality"] == "") & (ok["fusion"] != NO_FUSION)].itertuples():
        modalities = dataset_modalities(cfg, r.dataset)
        mine = records[r.run_dir]["diagnostics"]["test_correct"]
        partners = [uni.get((r.dataset, r.backbone, r.fold, r.seed, m)) for m in modalities]
        if any(p is None or p["diagnostics"]["test_correct"]["ids"] != mine["ids"] for p in partners):
            continue
        strings = [p["diagnostics"]["test_correct"]["best"] for p in partners]
        for i, correct in enumerate(mine["best"]):
            group = _group_name(tuple(s[i] == "1" for s in strings), modalities)
            tally = counts.setdefault((r.dataset, r.backbone, r.fusion, r.method, group), [0, 0])
            tally[0] += 1
            tally[1] += correct == "1"
    rows = []
    for (dataset, backbone, fusion, method, group), (n, right) in counts.items():
        total = sum(v[0] for k, v in counts.items() if k[:4] == (dataset, backbone, fusion, method))
        rows.append(
            {
                "dataset": dataset,
                "backbone": backbone,
                "fusion": fusion,
                "method": method,
                "group": group,
                "samples": n,
                "share": n / total,
                "multimodal_acc": right / n,
            }
        )
    return pd.DataFrame(
        rows, columns=["dataset", "backbone", "fusion", "method", "group", "samples", "share", "multimodal_acc"]
    )


def group_names(modalities: list[str]) -> list[str]:
    """Agreement groups in a fixed order: all unimodal models right, each subset, none right."""
    import itertools

    patterns = sorted(itertools.product([True, False], repeat=len(modalities)), key=lambda p: -sum(p))
    return [_group_name(p, modalities) for p in patterns]


def _group_name(pattern: tuple[bool, ...], modalities: list[str]) -> str:
    right = [m for m, ok in zip(modalities, pattern) if ok]
    if len(right) == len(modalities):
        return "all unimodal right"
    if not right:
        return "all unimodal wrong"
    return "only " + "+".join(right) + " right"


# --- formatting ------------------------------------------------------------------------------------------------
#: marks after the value in a main table's main-metric cell: not significantly worse than the table's best row;
#: differs from the reference method (with the same fusion)
NOT_WORSE_MARK = "†"
SIGNIFICANT_MARK = " *"
_PLACEHOLDERS = {"", "–", NA}
_NUMBER = re.compile(r"[\[(]?[+\-−]?\d")
_BEST = "\0best"  # the best row's runs under this method name, so that paired_test pairs any row with them


@dataclass
class Table:
    """A displayed table: every cell as text, the cells shown in bold as (row position, column), numbered footnotes
    (cells refer to them as [i]) and a legend of its marks; Markdown, HTML and LaTeX each render it their own way."""

    frame: pd.DataFrame
    bold: set[tuple[int, str]] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    legend: str = ""


def as_table(table: Table | pd.DataFrame) -> Table:
    return table if isinstance(table, Table) else Table(table)


def numeric_columns(frame: pd.DataFrame) -> list[str]:
    """Columns whose every filled cell starts with a number (an empty column too: its numbers are missing):
    right-aligned and never wrapped, in every format."""
    out = []
    for col in frame.columns:
        filled = [str(v) for v in frame[col] if str(v) not in _PLACEHOLDERS]
        if all(_NUMBER.match(v) for v in filled):
            out.append(col)
    return out


def split_marks(text: str) -> tuple[str, str]:
    """'95.1 ± 1.3† *' -> ('95.1 ± 1.3', '† *'): the value (what bold covers) and the marks after it."""
    value, marks = str(text), ""
    for mark in (SIGNIFICANT_MARK, NOT_WORSE_MARK):  # the reverse of the order main_table appends them in
        if value.endswith(mark):
            value, marks = value[: -len(mark)], mark + marks
    return value, marks


def pm(mean: float, std: float, scale: float = 100.0, digits: int = 1) -> str:
    if mean != mean:  # NaN
        return "–"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}" if std == std else f"{scale * mean:.{digits}f}"


def _num(value: float, fmt: str) -> str:
    return "–" if value is None or value != value else format(value, fmt)


def _cell(r: pd.Series, col: str, scale: float = 100.0, digits: int = 1) -> str:
    return pm(r.get(f"{col}_mean", math.nan), r.get(f"{col}_std", math.nan), scale, digits)


def _ci(r: pd.Series, col: str = "test_acc", scale: float = 100.0, digits: int = 1) -> str:
    lo, hi = r.get(f"{col}_ci_lo", math.nan), r.get(f"{col}_ci_hi", math.nan)
    if lo != lo or hi != hi:
        return "–"
    return f"[{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def _is_true(value) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def _text(value) -> str:
    """A free-text cell's value ('' for a missing one: NaN is truthy)."""
    return "" if value is None or (isinstance(value, float) and value != value) else str(value)


def _fusion(fusion: str) -> str:
    return "—" if fusion == NO_FUSION else fusion


def _row_name(r: pd.Series) -> str:
    return r["method"] if r["fusion"] == NO_FUSION else f"{r['method']} · {r['fusion']}"


def by_rank(table: pd.DataFrame) -> pd.DataFrame:
    """Rows best first; rows without a rank (n/a, failed, not run) last; ties and the unranked in grid order."""
    return table.sort_values("rank", na_position="last", kind="stable") if "rank" in table else table


@dataclass
class BestComparison:
    """The rows of one table (summary index labels) compared with its best row on the main metric."""

    best: list = field(default_factory=list)  # the best rows (ties share the top rank)
    not_worse: set = field(default_factory=set)  # not significantly worse than the best
    untested: list = field(default_factory=list)  # fewer than 2 runs paired with the best's
    tests: int = 0  # comparisons Holm adjusted over
    tested: bool = False  # False: no per-run scores were given


def compare_with_best(table: pd.DataFrame, runs: pd.DataFrame | None, alpha: float = 0.05) -> BestComparison:
    """Which rows of one dataset × backbone table are not significantly worse than its best (top-ranked) row: each
    row's main metric against the best row's by ``paired_test`` over the (seed, fold) runs both have, Holm-adjusted
    over the table's comparisons (``holm``); a row with fewer than 2 such pairs cannot be tested. Without ``runs``
    (per-run scores) only the best rows are known."""
    ranked = table[(table["runs"] > 0) & table["rank"].notna()] if "rank" in table else table.iloc[:0]
    if ranked.empty:
        return BestComparison()
    best = list(ranked.index[ranked["rank"] == ranked["rank"].min()])
    if runs is None or runs.empty:
        return BestComparison(best)
    top = ranked.loc[best[0]]
    ok = runs[(runs["status"] == "ok") & (runs["dataset"] == top["dataset"]) & (runs["backbone"] == top["backbone"])]
    best_runs = ok[(ok["fusion"] == top["fusion"]) & (ok["method"] == top["method"])]
    tests, untested = {}, []
    for i, r in by_rank(ranked.drop(index=best)).iterrows():
        mine = ok[(ok["fusion"] == r["fusion"]) & (ok["method"] == r["method"])]
        pair = pd.concat([mine, best_runs.assign(fusion=r["fusion"], method=_BEST)])  # any fusion pairs with the best
        result = paired_test(pair, (r["dataset"], r["backbone"], r["fusion"], r["method"]), _BEST)
        if result["n_pairs"] < 2:
            untested.append(i)
            continue
        p = result["p_vs_ref"]  # NaN: every pair differs by the same nonzero amount, a difference without noise
        tests[i] = (0.0 if p != p else p, result["delta_vs_ref"])
    adjusted = holm(p for p, _ in tests.values())
    not_worse = {i for (i, (_, delta)), p in zip(tests.items(), adjusted) if p >= alpha or delta >= 0}
    return BestComparison(best, not_worse, untested, len(tests), True)


def main_legend(
    table: pd.DataFrame, metric: str, reference: str, alpha: float, comparison: BestComparison, order: bool = True
) -> str:
    """What the main table's marks (and with ``order`` its row order) mean."""
    parts = ["Rows best first by rank (rows without one last)."] if order else []
    parts.append(f"Bold: the best {metric}.")
    if comparison.tested:
        tests = f"{comparison.tests} comparison" + ("" if comparison.tests == 1 else "s")
        parts.append(
            f"{NOT_WORSE_MARK}: not significantly worse than the best (two-sided paired t-test over the same seeds × "
            f"folds, Holm-adjusted over the table's {tests} with the best, p ≥ {alpha:g})."
        )
        if comparison.untested:
            names = ", ".join(_row_name(table.loc[i]) for i in comparison.untested)
            parts.append(f"Not tested against the best (fewer than 2 runs paired with its runs): {names}.")
    parts.append(f"*: differs from {reference} with the same fusion at Holm-adjusted p < {alpha:g}.")
    return " ".join(parts)


def _footnote(notes: list[str], text: str) -> int:
    """The number of a footnote, adding it when new."""
    if text not in notes:
        notes.append(text)
    return notes.index(text) + 1


def _refs(numbers: list[int]) -> str:
    """'[1–3, 5]' from [1, 2, 3, 5]: footnote references, runs of consecutive numbers as ranges (a narrow cell)."""
    spans: list[list[int]] = []
    for n in sorted(set(numbers)):
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return "[" + ", ".join(f"{a}–{b}" if b > a + 1 else f"{a}, {b}" if b > a else f"{a}" for a, b in spans) + "]"


def _status(r: pd.Series, notes: list[str]) -> str:
    """A short status word with a reference to the footnotes holding the reason and the method's notes."""
    status, reason = _text(r["status"]), _text(r.get("reason"))
    numbers = [_footnote(notes, f"{status}: {reason}")] if status != "ok" and reason else []
    numbers += [_footnote(notes, note) for note in filter(None, _text(r.get("notes")).split(NOTE_SEP))]
    return f"{status} {_refs(numbers)}" if numbers else status


def main_table(
    table: pd.DataFrame,
    modalities: list[str],
    reference: str,
    runs: pd.DataFrame | None = None,
    alpha: float = 0.05,
    comparison: BestComparison | None = None,
) -> Table:
    """The displayed main table of one dataset × backbone, best first: the best main metric (test accuracy; mAP for
    multi-label data) in bold, the rows not significantly worse than it marked (needs ``runs``, the per-run rows of
    ``load_runs``), reasons and method notes as numbered footnotes."""
    notes: list[str] = []
    rows, bold = [], set()
    multi_label = bool(table["multi_label"].any()) if "multi_label" in table else False
    metric = "test mAP" if multi_label else "test acc"
    comparison = comparison or compare_with_best(table, runs, alpha)
    # optional columns: shown when some row of this table has them (top-5 needs more than 5 classes; video-level
    # metrics need videos of several clips)
    present = {
        c
        for c in ("test_top5", "test_video_acc", "test_video_top5", "test_video_map", "test_video_mauc")
        if f"{c}_mean" in table and table[f"{c}_mean"].notna().any()
    }
    has_top5 = "test_top5" in present
    tuned = "hyperparameters" in table and table["hyperparameters"].notna().any()
    for position, (index, r) in enumerate(by_rank(table).iterrows()):
        value = _cell(r, "test_map" if multi_label else "test_acc")
        value += NOT_WORSE_MARK if index in comparison.not_worse else ""
        value += SIGNIFICANT_MARK if _is_true(r.get("significant")) else ""
        if index in comparison.best:
            bold.add((position, metric))
        row = {
            "rank": _num(r.get("rank"), "g"),  # a tie's average rank keeps its .5
            "method": r["method"],
            "fusion": _fusion(r["fusion"]),
            "runs": str(r["runs"]),
        }
        if multi_label:  # the G-Blend paper's mini-AudioSet metrics first
            row.update(
                {
                    metric: value,
                    f"Δ vs {reference}": _num(100 * r.get("delta_vs_ref", math.nan), "+.1f"),
                    "p": _num(r.get("p_vs_ref"), ".3f"),
                    "p Holm": _num(r.get("p_holm"), ".3f"),
                    "mAUC": _cell(r, "test_mauc"),
                    "top-1": _cell(r, "test_acc"),
                    "top-1 95% CI": _ci(r),
                }
            )
        else:
            row.update(
                {
                    metric: value,
                    "95% CI": _ci(r),
                    f"Δ vs {reference}": _num(100 * r.get("delta_vs_ref", math.nan), "+.1f"),
                    "p": _num(r.get("p_vs_ref"), ".3f"),
                    "p Holm": _num(r.get("p_holm"), ".3f"),
                    "macro-F1": _cell(r, "test_f1"),
                    "mAP": _cell(r, "test_map"),
                    "ECE": _cell(r, "test_ece"),
                }
            )
        for col, name in (
            ("test_top5", "top-5"),
            ("test_video_acc", "video top-1" if has_top5 else "video acc"),
            ("test_video_top5", "video top-5"),
            ("test_video_map", "video mAP"),
            ("test_video_mauc", "video mAUC"),
        ):
            if col in present:
                row[name] = _cell(r, col)
        row.update({f"acc {m}": _cell(r, f"test_acc_{m}") for m in modalities})
        row["val acc"] = _cell(r, "val_acc")
        if tuned:
            row.update(
                {"tuned hyperparameters": r.get("hyperparameters") or "–", "trials": _num(r.get("trials"), ".0f")}
            )
        row["status"] = _status(r, notes)
        rows.append(row)
    legend = main_legend(table, metric, reference, alpha, comparison)
    return Table(pd.DataFrame(rows).fillna("–"), bold, notes, legend)


def leaderboard_table(
    table: pd.DataFrame,
    modalities: list[str],
    reference: str,
    runs: pd.DataFrame | None = None,
    alpha: float = 0.05,
) -> tuple[pd.DataFrame, list[str]]:
    """``main_table``'s cells and footnotes (its bold cells in the frame's ``attrs['bold']``)."""
    main = main_table(table, modalities, reference, runs, alpha)
    main.frame.attrs["bold"] = main.bold
    return main.frame, main.notes


def diagnostics_table(table: pd.DataFrame, modalities: list[str]) -> pd.DataFrame:
    rows = []
    for _, r in by_rank(table[table["runs"] > 0]).iterrows():
        row = {"method": r["method"], "fusion": _fusion(r["fusion"])}
        row.update({f"probe {m}": _cell(r, f"probe_{m}") for m in modalities})
        row.update({f"Shapley {m}": _cell(r, f"shapley_{m}") for m in modalities})
        row.update(
            {
                "OGR": _cell(r, "ogr", 1.0, 2),
                "best epoch": _cell(r, "best_epoch", 1.0, 1),
                "params (M)": _num(r.get("params_mean", math.nan) / 1e6, ".3f"),
                "MFLOPs/sample": _num(r.get("flops_mean", math.nan) / 1e6, ".2f"),
                "s/epoch": _num(r.get("sec_per_epoch_mean"), ".2f"),
                "peak mem (MB)": _num(r.get("peak_mem_mb_mean"), ".0f"),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def robustness_table(table: pd.DataFrame, modalities: list[str]) -> pd.DataFrame:
    """Per fused row: test accuracy with every modality present and with each one absent (input zeroed), mean ± std
    over runs; empty when no row has the coalition accuracies (``evaluation.shapley`` off)."""
    fused = table[(table["runs"] > 0) & (table["fusion"] != NO_FUSION)]
    cols = ["masked_all_mean"] + [f"masked_without_{m}_mean" for m in modalities]
    if not any(c in fused and fused[c].notna().any() for c in cols):
        return pd.DataFrame()
    rows = []
    for _, r in by_rank(fused).iterrows():
        row = {"method": r["method"], "fusion": r["fusion"], "all present": _cell(r, "masked_all")}
        row.update({f"without {m}": _cell(r, f"masked_without_{m}") for m in modalities})
        rows.append(row)
    return pd.DataFrame(rows)


def _signed(mean: float, std: float, scale: float = 100.0) -> str:
    if mean != mean:
        return NA
    return f"{scale * mean:+.1f} ± {scale * std:.1f}" if std == std else f"{scale * mean:+.1f}"


def audit_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per row with finished runs: the validation-selected test accuracy beside what selecting the epoch on the test
    set would have claimed and the gap (optimistic; never used for ranks or tests); n/a for runs without an audit."""
    rows = []
    for _, r in by_rank(table[table["runs"] > 0]).iterrows():
        audited = r.get("audit_runs", 0) or 0
        had = audited > 0

        def cell(col: str, scale: float = 100.0, digits: int = 1) -> str:
            return _cell(r, col, scale, digits) if had else NA

        rows.append(
            {
                "method": r["method"],
                "fusion": _fusion(r["fusion"]),
                "test acc (val-selected)": _cell(r, "test_acc"),
                "epoch (val-selected)": _cell(r, "best_epoch", 1.0, 1),
                "test acc (test-selected, optimistic)": cell("audit_test_selected_acc"),
                "epoch (test-selected)": cell("audit_test_selected_epoch", 1.0, 1),
                "gap (optimistic)": _signed(r.get("audit_gap_mean", math.nan), r.get("audit_gap_std", math.nan))
                if had
                else NA,
                "audited runs": f"{int(audited)}/{int(r['runs'])}",
            }
        )
    return pd.DataFrame(rows)


ABSENT = {"mean": "replaced by the training split's mean input", "zero": "set to zero"}


def robustness_caption(table: pd.DataFrame) -> str:
    """The missing-modality table's caption, saying what an absent input was in these runs."""
    kinds = sorted({k for v in table.get("absent_input", pd.Series(dtype=object)).dropna() for k in v.split(", ")})
    how = " or ".join(ABSENT.get(k, k) for k in kinds) or "absent"
    mixed = " (the runs differ: see train.absent_input)" if len(kinds) > 1 else ""
    return (
        "Missing-modality robustness: test accuracy (%) with every modality present and with one modality absent "
        f"(its input {how}{mixed}), mean ± std over runs"
    )


AUDIT_CAPTION = (
    "What test-set selection would have claimed (optimistic: the epoch with the best test accuracy, never used for "
    "selection, ranks or tests): test accuracy (%) of the validation-selected checkpoint beside the best per-epoch "
    "test accuracy and the gap (test-selected − validation-selected, points), mean ± std over the audited runs"
)


def agreement_table(agree: pd.DataFrame, modalities: list[str], table: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per method × fusion: for each group, its share of the test set and the multimodal accuracy in it; in
    the order of ``table`` (the summary rows of the same dataset × backbone, best first) when given."""
    rows = []
    groups = agree.groupby(["fusion", "method"], sort=False)
    if table is not None:
        order = {key: i for i, key in enumerate(zip(by_rank(table)["fusion"], by_rank(table)["method"]))}
        groups = sorted(groups, key=lambda item: order.get(item[0], len(order)))
    for (fusion, method), part in groups:
        part = part.set_index("group")
        row = {"method": method, "fusion": fusion}
        for group in group_names(modalities):
            if group in part.index:
                row[group] = f"{100 * part.loc[group, 'share']:.1f}% · {100 * part.loc[group, 'multimodal_acc']:.1f}"
            else:
                row[group] = "–"
        rows.append(row)
    return pd.DataFrame(rows)


COLUMN_GUIDE = [
    (
        "rank",
        "position by mean test accuracy within the dataset × backbone, from exact correct counts (test mAP rounded "
        f"to {SCORE_DECIMALS} decimals for multi-label data); tied rows share the average rank; rows are listed best "
        "first, rows without a rank last",
    ),
    (
        "test acc",
        "test accuracy of the best-validation checkpoint, mean ± std over seeds × folds; bold = the best; "
        f"{NOT_WORSE_MARK} = not significantly worse than the best (paired t-test against the best row over the same "
        "seeds × folds, Holm-adjusted over the table's comparisons with it; rows with fewer than 2 such pairs are not "
        "tested); * = differs from the reference method at the configured level (paired t-test, Holm-adjusted p)",
    ),
    (
        "95% CI",
        f"percentile bootstrap interval of the mean test accuracy over test clips ({BOOTSTRAP_RESAMPLES} resamples "
        f"of the test clips with replacement, seed {BOOTSTRAP_SEED}, the same resamples for every run and method on "
        "a test set; each resample's value is the mean over the row's runs); multi-label data: of top-1",
    ),
    (
        "Δ vs ref, p, p Holm",
        "mean paired difference in test accuracy (mAP for multi-label data) from the reference method (same fusion, "
        "modalities, seeds/folds), the t-test's p-value, and that p-value Holm-adjusted over every comparison of "
        "the dataset × backbone table",
    ),
    (
        "macro-F1, mAP, ECE",
        "unweighted mean F1 over classes; mean one-vs-rest average precision; expected calibration error (15 bins)",
    ),
    (
        "multi-label: test mAP, mAUC, top-1",
        "per-class sigmoid scores: mean average precision and mean ROC AUC over classes (G-Blend's mini-AudioSet "
        "metrics); top-1 = the highest-scored class is one of the labels",
    ),
    (
        "top-5; video top-1/top-5",
        "top-5 accuracy (more than 5 classes); clip level, and per video from the clip-averaged probabilities of its K "
        "clips (preprocess.clips_per_video)",
    ),
    (
        "acc <modality>",
        "accuracy of that modality's share of the fused head (exact for concat/sum, a zero-masking Shapley estimate "
        "otherwise); for <modality>-only rows the unimodal model",
    ),
    (
        "probe <modality>",
        "test accuracy of a linear classifier fitted on the frozen encoder's training features (OGM-GE's "
        "under-optimisation measure)",
    ),
    (
        "Shapley <modality>",
        "Shapley value of the modality for test accuracy with other modalities' inputs absent (train.absent_input); "
        "values add up to acc(all) − acc(none)",
    ),
    (
        "OGR",
        "overfitting-to-generalisation ratio from the initial model to the selected checkpoint (G-Blend eq. 3); lower "
        "is better",
    ),
    (
        "missing-modality robustness",
        "test accuracy with every modality present and with each modality absent (its input as train.absent_input "
        "sets it: the training mean, or zeros; the Shapley diagnostic's coalition accuracies), mean ± std over seeds",
    ),
    (
        "test-selected (optimistic)",
        "the best per-epoch test accuracy and its epoch, i.e. what selecting on the test set would have claimed, "
        "and the gap to the validation-selected checkpoint's; never used for selection, ranks or tests; n/a for "
        "runs without the audit record",
    ),
    (
        "Friedman, CD diagram",
        "Friedman test of the methods present in every dataset × backbone × fusion block, ranked within blocks; "
        "Nemenyi's critical difference joins methods whose mean ranks do not differ significantly",
    ),
    (
        "agreement",
        "test samples grouped by which unimodal models are right: share of the test set · multimodal accuracy inside "
        "(MLB's analysis)",
    ),
    (
        "status",
        "ok, or what kept runs from finishing (n/a: the method cannot run this combination; failed; not run) with "
        "references [i] to the numbered footnotes under the table, which hold the reasons and the methods' notes",
    ),
    (
        "tuned hyperparameters, trials",
        "with tuning on: the best trial's values (validation score) and the number of trials, "
        "the same for every method",
    ),
    (
        "cost",
        "parameters, forward FLOPs per sample (torch.utils.flop_counter), seconds per training epoch, peak memory "
        "(process RSS on CPU, allocated on CUDA)",
    ),
]


def rank_table(summary: pd.DataFrame) -> Table:
    """``mean_ranks`` for display: each dataset's rank, the mean rank (the lowest of each backbone in bold) and the
    number of datasets, as plain columns (the pivot's column name would be a stray header)."""
    ranks = mean_ranks(summary)
    if ranks.empty:
        return Table(pd.DataFrame())
    keys = ["backbone", "fusion", "method", "mean rank", "datasets"]
    datasets = [c for c in ranks.columns if c not in keys]
    frame = pd.DataFrame(
        {
            "backbone": ranks["backbone"],
            "fusion": ranks["fusion"].map(_fusion),
            "method": ranks["method"],
            **{str(d): ranks[d].map(lambda v: _num(v, "g")) for d in datasets},
            "mean rank": ranks["mean rank"].map(lambda v: _num(v, ".2f")),
            "datasets": ranks["datasets"].map(lambda v: _num(v, ".0f")),
        }
    ).reset_index(drop=True)
    lowest = ranks.groupby("backbone")["mean rank"].transform("min").to_numpy()
    bold = {(i, "mean rank") for i, (v, low) in enumerate(zip(ranks["mean rank"], lowest)) if v == low}
    return Table(frame, bold, legend="Bold: the lowest mean rank of each backbone (1 = best).")


def _markdown_cell(text: str, bold: bool) -> str:
    text = str(text).replace("|", "\\|")
    if not bold:
        return text
    value, marks = split_marks(text)
    return f"**{value}**{marks}"


def _markdown(table: Table | pd.DataFrame) -> list[str]:
    """A pipe table: numbers right-aligned (`---:`), text left-aligned, bold cells as **…**."""
    t = as_table(table)
    df = t.frame
    if df.empty:
        return []
    numeric = set(numeric_columns(df))
    lines = [
        "| " + " | ".join(str(c) for c in df.columns) + " |",
        "|" + "".join("---:|" if c in numeric else ":---|" for c in df.columns),
    ]
    lines += [
        "| " + " | ".join(_markdown_cell(v, (i, c) in t.bold) for c, v in zip(df.columns, row)) + " |"
        for i, row in enumerate(df.itertuples(index=False))
    ]
    return lines


def _markdown_notes(table: Table) -> list[str]:
    """The legend and the numbered footnotes under a table (two trailing spaces: a line break)."""
    lines = ["", table.legend] if table.legend else []
    if table.notes:
        lines.append("")
        lines += [f"[{i}] {note}" + ("" if i == len(table.notes) else "  ") for i, note in enumerate(table.notes, 1)]
    return lines


def tuning_statement(summary: pd.DataFrame) -> str:
    """Which mode produced the numbers: tuned (with the budget) or the config's values (paper defaults)."""
    modes = sorted({m for m in summary.get("tuning", pd.Series(dtype=object)).dropna()})
    if not modes:
        return "Hyperparameters: no finished runs."
    if modes == ["paper defaults"]:
        return (
            "Hyperparameters: **paper defaults** — every run used the config's values (`tuning.enabled: false`); "
            "no method was tuned."
        )
    budgets = sorted({int(t) for t in summary["trials"].dropna()})
    searches = sorted({s for s in summary.get("search", pd.Series(dtype=object)).dropna()}) or ["random search"]
    mixed = " Some rows were not tuned (paper defaults)." if "paper defaults" in modes else ""
    return (
        f"Hyperparameters: **tuned on validation** ({' / '.join(map(str, budgets))} trials of "
        f"{' / '.join(searches)} per "
        "dataset × "
        "fold × backbone × fusion × method, the same budget for every method; the test split is never read while "
        f"tuning). Each row lists the chosen values.{mixed}"
    )


def to_markdown(
    summary: pd.DataFrame, cfg: dict, agree: pd.DataFrame | None = None, runs: pd.DataFrame | None = None
) -> str:
    """Every table of the experiment as Markdown; ``runs`` (``load_runs``' rows) lets each main table mark the rows
    not significantly worse than its best."""
    board = cfg.get("leaderboard", {})
    reference, alpha = board.get("reference", "joint"), board.get("alpha", 0.05)
    experiment = cfg.get("experiment", "default")
    lines = [
        f"# Leaderboard: experiment `{experiment}`",
        "",
        "Test metrics (%) of each run's best-validation checkpoint, mean ± std over runs (seeds × folds) and a "
        "95% bootstrap interval over test clips; `*`: differs from "
        f"`{reference}` with the same fusion at Holm-adjusted p < {alpha} (paired t-test over seeds × folds, Holm "
        "over each table's comparisons). Regenerate with "
        "`snakemake` "
        f"(or `python -m benchmark aggregate`); `results/{experiment}/report.html` has the plots. Every row shows only "
        "runs "
        "whose recorded identity matches the config's.",
        "",
    ]
    lines += [tuning_statement(summary), ""]
    lines += [f"- **{name}**: {text}" for name, text in COLUMN_GUIDE] + [""]
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        modalities = dataset_modalities(cfg, dataset)
        lines += [f"## {dataset} · {backbone}", ""]
        folds = sorted({fold for joined in table["fold_list"] for fold in joined.split(",") if fold})
        if len(folds) > 1:
            lines += [f"{len(folds)} folds ({', '.join(folds)}); runs = seeds × folds.", ""]
        main = main_table(table, modalities, reference, runs, alpha)
        lines += _markdown(main) + _markdown_notes(main)
        diag = diagnostics_table(table, modalities)
        if not diag.empty:
            lines += ["", "Diagnostics (test split, best-validation checkpoint):", ""] + _markdown(diag)
        robust = robustness_table(table, modalities)
        if not robust.empty:
            lines += ["", f"{robustness_caption(table)}:", ""] + _markdown(robust)
        audit = audit_table(table)
        if not audit.empty:
            lines += ["", f"{AUDIT_CAPTION}:", ""] + _markdown(audit)
        if agree is not None and len(agree):
            part = agree[(agree["dataset"] == dataset) & (agree["backbone"] == backbone)]
            if len(part):
                lines += ["", "Agreement with the unimodal models (share of test samples · multimodal accuracy %):", ""]
                lines += _markdown(agreement_table(part, modalities, table))
        lines.append("")
    ranks = rank_table(summary)
    if not ranks.frame.empty:
        lines += ["## Mean rank across datasets", ""] + _markdown(ranks) + _markdown_notes(ranks) + [""]
    result = friedman(summary, alpha)
    lines += ["## Friedman test and critical-difference diagram", "", friedman_text(result), ""]
    if result["applicable"]:
        lines += [f"![critical-difference diagram](plots/{CD_FIGURE})", ""]
    return "\n".join(lines)


LATEX = {
    "\\": r"\textbackslash{}",
    "_": r"\_",
    "%": r"\%",
    "&": r"\&",
    "#": r"\#",
    "$": r"\$",
    "{": r"\{",
    "}": r"\}",
    # math mode, not the text symbols: those would need the TS1 fonts (bitmaps generated on the fly without
    # cm-super), and OT1's own < and > print ¡ and ¿
    "~": r"$\sim$",
    "^": r"\^{}",
    "<": "$<$",
    ">": "$>$",
    "*": "$^*$",
    "†": r"$^\dagger$",
    "±": r"$\pm$",
    "–": "--",
    "—": "---",
    "−": "$-$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "Δ": r"$\Delta$",
    "·": r"$\cdot$",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX.get(ch, ch) for ch in str(text))


def _registered_display_name(balancer: str) -> str | None:
    try:
        from benchmark.components import registry

        name = getattr(registry("balancers").get(balancer), "display_name", None)
    except Exception:  # an unknown or user class (its module may not import here): the caller falls back to the id
        return None
    return name if isinstance(name, str) and name else None


def display_name(balancer: str, method: str | None = None) -> str:
    """A row's method as a paper names it: the registered class's ``display_name`` ('OGM-GE'), '<Modality> only' for
    the unimodal baselines, else a readable form of the id; a modality subset ('joint [audio+text]') stays appended."""
    method = method or balancer
    if method.endswith("-only"):
        return f"{method[: -len('-only')].capitalize()} only"
    name = _registered_display_name(balancer) or balancer.replace("_", "-")
    _, bracket, subset = method.partition(" [")
    return f"{name} [{subset}" if bracket else name


def _latex_value(value: str, bold: bool) -> str:
    value = latex_escape(value)
    if re.match(r"-\d", value):  # a minus sign, not a hyphen
        value = "$-$" + value[1:]
    return rf"\textbf{{\boldmath {value}}}" if bold else value  # \boldmath: the ± (math) in bold too


def _latex_marks(marks: str) -> str:
    return latex_escape(marks.replace(SIGNIFICANT_MARK, "*"))


def latex_table(main: Table, caption: str, label: str) -> str:
    """One booktabs table (table environment, centred, caption above): numbers in r columns, text in l columns; a
    column with marks is an r@{}l pair, so that marked and unmarked numbers line up."""
    df = main.frame
    numeric = set(numeric_columns(df))
    marked = {c for c in numeric if any(split_marks(v)[1] for v in df[c])}
    spec = "".join("r@{}l" if c in marked else "r" if c in numeric else "l" for c in df.columns)
    head = [rf"\multicolumn{{2}}{{c}}{{{latex_escape(c)}}}" if c in marked else latex_escape(c) for c in df.columns]
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        r"\small",
        r"\setlength{\tabcolsep}{4pt}",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for i, row in enumerate(df.itertuples(index=False)):
        cells = []
        for c, v in zip(df.columns, row):
            value, marks = split_marks(v)
            cells.append(_latex_value(value, (i, c) in main.bold))
            if c in marked:
                cells.append(_latex_marks(marks))
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def _constant_columns(frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Drop the fusion column when one fusion (besides the unimodal rows' —) and the runs column when one count
    holds for every row, so the table fits a page; the caption says them instead (' (concat, 5 runs each)')."""
    said = []
    fusions = set(frame["fusion"]) - {"—"} if "fusion" in frame else set()
    if "fusion" in frame and len(fusions) <= 1:
        frame = frame.drop(columns="fusion")
        said += [f"fusion {f}" for f in fusions]
    if "runs" in frame and frame["runs"].nunique() == 1:
        said.append(f"{frame['runs'].iloc[0]} runs each")
        frame = frame.drop(columns="runs")
    return frame, f" ({', '.join(said)})" if said else ""


def to_latex(summary: pd.DataFrame, cfg: dict, runs: pd.DataFrame | None = None) -> str:
    """One paper-ready booktabs table per dataset × backbone: the main metrics of the rows with finished runs, best
    first, methods by their display names, the best value in bold and (with ``runs``) the rows not significantly
    worse than it marked; every other column is in leaderboard.csv and leaderboard.md."""
    board = cfg.get("leaderboard", {})
    reference, alpha = board.get("reference", "joint"), board.get("alpha", 0.05)
    ref_name = display_name(reference)
    parts = [
        "% Generated by `python -m benchmark aggregate` from the metrics files; needs \\usepackage{booktabs}.",
        "% Main metrics only: every other column is in leaderboard.csv and leaderboard.md.",
        "",
    ]
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        finished = table[table["runs"] > 0]
        if finished.empty:
            continue
        comparison = compare_with_best(finished, runs, alpha)
        main = main_table(finished, dataset_modalities(cfg, dataset), reference, runs, alpha, comparison)
        multi_label = "test mAP" in main.frame
        metric = "test mAP" if multi_label else "test acc"
        keep = ["rank", "method", "fusion", "runs", metric, "95% CI", f"Δ vs {reference}", "p Holm"]
        keep += ["mAUC", "top-1"] if multi_label else []
        named = finished.assign(method=[display_name(b, m) for b, m in zip(finished["balancer"], finished["method"])])
        frame = main.frame[[c for c in keep if c in main.frame]].assign(method=list(by_rank(named)["method"]))
        frame = frame.rename(columns={f"Δ vs {reference}": f"Δ vs {ref_name}"})
        frame, constant = _constant_columns(frame)
        legend = main_legend(named, metric, ref_name, alpha, comparison, order=False)
        omitted = [_row_name(r) for _, r in table[table["runs"] == 0].iterrows()]
        caption = (
            f"{dataset} · {backbone}{constant}: {'test mAP' if multi_label else 'test accuracy'} (%) of the "
            "best-validation checkpoint, mean ± std over seeds × folds (runs)"
            + ("" if multi_label else "; 95% CI: bootstrap over test clips")
            + f"; Δ vs {ref_name}, p Holm: paired t-test against {ref_name} with the same fusion. {legend}"
            + (f" Not shown (no finished runs): {', '.join(omitted)}." if omitted else "")
        )
        label = f"tab:{dataset}-{backbone}".replace("_", "-")
        parts.append(latex_table(Table(frame, main.bold), caption, label))
    return "\n".join(parts)
