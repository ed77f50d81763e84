"""The researcher's tools: TensorBoard event files, the history table, the component catalog and ``compare``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmark import catalog, cli, compare, events

REPO = Path(__file__).resolve().parents[1]

# an epoch history as benchmark.train.fit writes it: harness columns, per-modality metrics, a method's coefficients
HISTORY = [
    {
        "epoch": 0,
        "lr": 0.1,
        "train_loss": 2.0,
        "train_acc": 0.25,
        "val_loss": 1.9,
        "val_accuracy": 0.3,
        "val_macro_f1": 0.2,
        "val_acc_audio": 0.28,
        "val_loss_audio": 2.1,
        "val_video_top5": 0.9,
        "train_eval_loss": 1.95,
        "ogr": 0.5,
        "k_audio": 0.7,
        "executed": True,
    },
    {
        "epoch": 1,
        "lr": 0.1,
        "train_loss": 1.5,
        "train_acc": 0.5,
        "val_loss": 1.4,
        "val_accuracy": 0.55,
        "val_macro_f1": 0.5,
        "val_acc_audio": 0.4,
        "val_loss_audio": 1.8,
        "val_video_top5": 0.95,
        "train_eval_loss": 1.45,
        "ogr": float("nan"),  # not finite: left out, as metrics.json stores it as null
        "k_audio": 0.8,
        "executed": False,
    },
    {
        "epoch": 2,
        "lr": 0.01,
        "train_loss": 1.1,
        "train_acc": 0.6,
        "val_loss": 1.2,
        "val_accuracy": 0.6,
        "val_macro_f1": 0.58,
        "val_acc_audio": 0.45,
        "val_loss_audio": 1.6,
        "val_video_top5": 0.97,
        "train_eval_loss": 1.05,
        "ogr": None,
        "k_audio": 0.9,
        "executed": True,
    },
]
TAGS = {
    "lr": "lr",
    "train_loss": "loss/train",
    "train_acc": "accuracy/train",
    "val_loss": "loss/val",
    "val_accuracy": "accuracy/val",
    "val_macro_f1": "macro_f1/val",
    "val_acc_audio": "accuracy/val_audio",
    "val_loss_audio": "loss/val_audio",
    "val_video_top5": "top5/val_video",
    "train_eval_loss": "loss/train_eval",
    "ogr": "diagnostic/ogr",
    "k_audio": "coefficient/k_audio",
    "executed": "coefficient/executed",
}


def read_scalars(folder: Path) -> dict[str, list]:
    """Every scalar in ``folder``'s event files, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def test_scalar_tags():
    assert {key: events.scalar_tag(key) for key in TAGS} == TAGS
    assert events.scalar_tag("val_acc_head_visual") == "accuracy/val_head_visual"
    assert events.scalar_tag("val_mAP") == "mAP/val"
    assert events.scalar_tag("w_fused") == "coefficient/w_fused"


def test_write_events_reads_back_as_the_history(tmp_path):
    path = events.write_events(tmp_path, HISTORY, seconds_per_epoch=[2.0, 3.0, 4.0])
    assert path.parent == tmp_path / "tensorboard"
    scalars = read_scalars(path.parent)
    assert set(scalars) == set(TAGS.values())
    for key, tag in TAGS.items():
        expected = [
            (row["epoch"] + 1, float(row[key]))
            for row in HISTORY
            if row[key] is not None and math.isfinite(float(row[key]))
        ]
        got = [(s.step, s.value) for s in scalars[tag]]
        assert [step for step, _ in got] == [step for step, _ in expected], tag
        np.testing.assert_allclose([v for _, v in got], [v for _, v in expected], rtol=1e-6, err_msg=tag)
    assert [s.wall_time for s in scalars["loss/train"]] == [2.0, 5.0, 9.0]  # cumulative training seconds


def test_rewriting_replaces_the_events(tmp_path):
    folder = tmp_path / "tensorboard"
    folder.mkdir()
    (folder / "events.out.tfevents.1700000000.host.123.0").write_bytes(b"")  # e.g. an older SummaryWriter file
    first = events.write_events(tmp_path, HISTORY[:2])
    data = first.read_bytes()
    again = events.write_events(tmp_path, HISTORY[:2])
    assert again == first and again.read_bytes() == data  # the same history gives the same bytes
    events.write_events(tmp_path, HISTORY)  # a rerun with the complete history
    assert [p.name for p in folder.iterdir()] == [events.EVENT_FILE]
    steps = [s.step for s in read_scalars(folder)["loss/train"]]
    assert steps == [1, 2, 3]  # each epoch once: nothing duplicated from the earlier files


def _metrics(run: dict, history: list[dict], settings: dict | None = None, **extra) -> dict:
    return {
        "status": "ok",
        "run": run,
        "identity": {"kind": "run", "identity": "abc", "numerics_version": 2},
        "config_hash": "h",
        "history": history,
        "settings": settings or {},
        "timing": {"seconds_per_epoch": [1.5] * len(history)},
        **extra,
    }


def test_backfill_from_metrics_equals_the_events_after_training(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    # metrics.json stores NaN as null; its history must give the same events as the one in memory
    stored = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in HISTORY]
    (run / "metrics.json").write_text(json.dumps(_metrics({"dataset": "d"}, stored)))
    assert cli.main(["events", str(tmp_path / "runs")]) == 0
    backfilled = (run / "tensorboard" / events.EVENT_FILE).read_bytes()
    direct = events.write_events(tmp_path / "direct", HISTORY, [1.5] * len(HISTORY)).read_bytes()
    assert backfilled == direct
    assert events.events_from_metrics(run / "metrics.json") == run / "tensorboard" / events.EVENT_FILE


def test_history_table():
    records = {
        "results/runs/d/main/cnn/concat/ogm_ge/seed0-aaa": _metrics(
            {
                "dataset": "d",
                "backbone": "cnn",
                "fusion": "concat",
                "balancer": "ogm_ge",
                "method": "ogm_ge",
                "seed": 0,
            },
            HISTORY[:2],
            {"fold": "f1"},
        ),
        "results/runs/d/main/cnn/none/unimodal-audio/seed1-bbb": _metrics(
            {"dataset": "d", "backbone": "cnn", "fusion": "none", "balancer": "unimodal", "method": "unimodal-audio"}
            | {"seed": 1},
            [{"epoch": 0, "lr": 0.3, "train_loss": 3.0, "val_accuracy": 0.1}],
            status="failed",
        ),
    }
    table = events.history_table(records)
    assert list(table.columns[: len(events.RUN_COLUMNS) + 1]) == [*events.RUN_COLUMNS, "epoch"]
    assert set(table.columns) == {*events.RUN_COLUMNS, "epoch", *(k for k in HISTORY[0] if k != "epoch")}
    assert len(table) == 3
    assert table["epoch"].tolist() == [1, 2, 1]
    assert table["method"].tolist() == ["ogm_ge", "ogm_ge", "audio-only"]  # as the leaderboard names it
    assert table["fold"].tolist() == ["f1", "f1", "main"]  # from the settings, else from the run folder
    assert table["status"].tolist() == ["ok", "ok", "failed"]
    assert table["seed"].tolist() == [0, 0, 1]
    assert table["k_audio"].iloc[:2].tolist() == [0.7, 0.8] and math.isnan(table["k_audio"].iloc[2])
    assert table["train_loss"].tolist() == [2.0, 1.5, 3.0]
    assert table["run_dir"].iloc[2].endswith("seed1-bbb")
    empty = events.history_table({})
    assert len(empty) == 0 and list(empty.columns) == [*events.RUN_COLUMNS, "epoch"]


def test_catalog_matches_the_registries():
    from benchmark.components import AXES, registry
    from benchmark.data.kinds import INPUT_KINDS

    assert catalog.AXES == AXES
    for axis in catalog.LISTABLE:
        reg = INPUT_KINDS if axis == "input_kinds" else registry(axis)
        listed = catalog.entries(axis)
        assert [e.name for e in listed] == reg.names(), axis
        for entry in listed:
            cls = reg.get(entry.name)
            assert entry.class_path == f"{cls.__module__}:{cls.__qualname__}"
            # every registered class states its display name and paper itself ("" when it is not from a paper)
            assert "display_name" in vars(cls) and "paper" in vars(cls), entry.class_path
            assert (entry.display_name, entry.paper) == (cls.display_name, cls.paper)
            assert entry.description == catalog.first_sentence(cls.__doc__) != ""
    by_name = {e.name: e for e in catalog.entries("balancers")}
    assert (by_name["ogm_ge"].display_name, by_name["gblend"].display_name) == ("OGM-GE", "G-Blend")
    assert catalog.short_citation(by_name["ogm_ge"].paper) == "Peng et al. 2022 (OGM-GE)"


def test_catalog_and_events_do_not_import_torch(tmp_path):
    code = (
        "import sys\n"
        "from benchmark import cli, events\n"
        "cli.main(['list', 'balancers'])\n"
        f"events.write_events({str(tmp_path)!r}, [{{'epoch': 0, 'train_loss': 1.0}}])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "ogm_ge" in res.stdout


def test_first_sentence():
    doc = """OGM (Peng et al. 2022, eqs. 8-11): cross-entropy, e.g. on the
        fused output. Then more. And more."""
    assert catalog.first_sentence(doc) == "OGM (Peng et al. 2022, eqs. 8-11): cross-entropy, e.g. on the fused output."
    assert catalog.first_sentence("One line\n\nA second paragraph.") == "One line"
    assert catalog.first_sentence(None) == ""
    assert catalog.short_citation("Peng et al. 2022 (OGM-GE), eqs. 8-10 and 16") == "Peng et al. 2022 (OGM-GE)"


def test_format_table(capsys):
    items = [
        catalog.Entry("balancers", "short", "m:A", "A short one.", "Doe et al. 2020 (X), eq. 1", "Short"),
        catalog.Entry("balancers", "a_longer_name", "m:B", "word " * 60, "", "Longer"),
    ]
    lines = catalog.format_table(items).splitlines()
    assert lines[0].split() == ["name", "description", "paper"]
    assert all(len(line) <= 120 for line in lines)
    paper_at = lines[0].index("paper")
    assert lines[2].startswith("short ") and lines[2][paper_at:] == "Doe et al. 2020 (X)"
    assert lines[3][paper_at:] == catalog.NO_PAPER and "…" in lines[3]
    wrapped = catalog.format_table(items, wrap=True).splitlines()
    assert len(wrapped) > 4 and all(len(line) <= 120 for line in wrapped)
    assert wrapped[2][wrapped[0].index("paper") :] == "Doe et al. 2020 (X), eq. 1"  # the whole paper
    assert cli.main(["list", "fusions", "--names"]) == 0
    assert capsys.readouterr().out.split() == [e.name for e in catalog.entries("fusions")]


LEADERBOARD_COLUMNS = ["dataset", "backbone", "fusion", "method", "balancer", "runs", "status", "reason"]


def _board(folder: Path, rows: list[tuple]) -> None:
    folder.mkdir(parents=True)
    frame = pd.DataFrame(
        [dict(zip([*LEADERBOARD_COLUMNS, "test_acc_mean", "test_acc_std", "val_acc_mean"], r)) for r in rows]
    )
    frame.to_csv(folder / "leaderboard.csv", index=False)


def _cells(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in ``text``, as lists of stripped cells (no header, no rule)."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [
        r
        for i, r in enumerate(rows)
        if not set(r[0]) <= set("-:") and not (i + 1 < len(lines) and "---" in lines[i + 1])
    ]


def _table_rows(text: str) -> dict[tuple, list[str]]:
    return {tuple(r[:4]): r[4:] for r in _cells(text)}


def test_compare_experiments(tmp_path):
    _board(
        tmp_path / "results" / "a",
        [
            ("d", "cnn", "concat", "joint", "joint", 3, "ok", "", 0.8, 0.01, 0.81),
            ("d", "cnn", "concat", "ogm_ge", "ogm_ge", 3, "ok", "", 0.9, 0.02, 0.9),
            ("d", "cnn", "sum", "pmr", "pmr", 0, "n/a", "needs concat", None, None, None),
        ],
    )
    _board(
        tmp_path / "results" / "b",
        [
            ("d", "cnn", "concat", "joint", "joint", 3, "ok", "", 0.85, 0.02, 0.8),
            ("d", "cnn", "sum", "pmr", "pmr", 0, "n/a", "needs concat", None, None, None),
            ("d", "cnn", "concat", "mlb", "mlb", 3, "ok", "", 0.95, 0.005, 0.9),
        ],
    )
    text = compare.compare("a", "b", root=tmp_path)  # experiment names under <root>/results
    assert text == compare.compare(tmp_path / "results" / "a", tmp_path / "results" / "b")
    rows = _table_rows(text)
    assert list(rows) == [
        ("d", "cnn", "concat", "joint"),
        ("d", "cnn", "concat", "ogm_ge"),
        ("d", "cnn", "sum", "pmr"),
        ("d", "cnn", "concat", "mlb"),
    ]
    assert rows["d", "cnn", "concat", "joint"] == ["80.0 ± 1.0", "85.0 ± 2.0", "+5.0", ""]
    assert rows["d", "cnn", "concat", "ogm_ge"] == ["90.0 ± 2.0", compare.MISSING, "", "only in A"]
    assert rows["d", "cnn", "sum", "pmr"] == ["n/a", "n/a", "", ""]
    assert rows["d", "cnn", "concat", "mlb"] == [compare.MISSING, "95.0 ± 0.5", "", "only in B"]
    assert "2 rows in both (1 higher in B, 0 lower), 1 only in A, 1 only in B" in text
    widths = {len(line) for line in text.splitlines() if line.startswith("|")}
    assert len(widths) == 1  # aligned
    val = _table_rows(compare.compare("a", "b", root=tmp_path, metric="val_acc"))
    assert val["d", "cnn", "concat", "joint"][2] == "-1.0"


def test_compare_runs(tmp_path):
    run = {"dataset": "d", "backbone": "cnn", "fusion": "concat", "seed": 0}
    settings = {"seed": 0, "train": {"epochs": 3, "optimizer": {"lr": 0.1}}, "balancer": {"name": "joint"}}
    extra = {
        "selection": {"best_epoch": 1, "epochs_trained": 3},
        "cost": {"params": 1000},
        "provenance": {"git_commit": "c1"},
    }
    a = _metrics(
        run | {"method": "joint"},
        HISTORY,
        settings,
        metrics={"best": {"test": {"accuracy": 0.8}, "val": {"accuracy": 0.82}}, "last": {"test": {"accuracy": 0.79}}},
        **extra,
    )
    other = json.loads(json.dumps(settings))
    other["train"]["optimizer"]["lr"] = 0.3
    other["balancer"] = {"name": "ogm_ge", "params": {"alpha": 0.8}}
    b = _metrics(
        run | {"method": "ogm_ge"},
        HISTORY,
        other,
        metrics={"best": {"test": {"accuracy": 0.86}, "val": {"accuracy": 0.84}}, "last": {"test": {"accuracy": 0.8}}},
        **extra,
    )
    for name, m in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(m))
    text = compare.compare(tmp_path / "a", tmp_path / "b" / "metrics.json")
    main, _, differ = text.partition("recorded settings differ")
    metrics = {r[0]: r[1:] for r in _cells(main)}
    assert metrics["test accuracy"] == ["0.8000", "0.8600", "+0.0600"]
    assert metrics["val accuracy"] == ["0.8200", "0.8400", "+0.0200"]
    assert metrics["best epoch (1-based)"] == ["2", "2", "+0"]
    assert metrics["status"] == ["ok", "ok", ""]
    changed = {r[0]: r[1:] for r in _cells(differ)}
    assert changed == {
        "run.method": ["joint", "ogm_ge"],
        "settings.balancer.name": ["joint", "ogm_ge"],
        "settings.balancer.params.alpha": [compare.MISSING, "0.8"],
        "settings.train.optimizer.lr": ["0.1", "0.3"],
    }
    assert text.count("recorded settings differ") == 1 and "4 recorded settings differ" in text


def test_compare_refuses_mixed_or_unknown(tmp_path):
    _board(tmp_path / "results" / "a", [("d", "cnn", "concat", "joint", "joint", 1, "ok", "", 0.8, 0.0, 0.8)])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text(json.dumps(_metrics({}, [])))
    with pytest.raises(compare.CompareError, match="compare two experiments or two runs"):
        compare.compare("a", tmp_path / "run", root=tmp_path)
    with pytest.raises(compare.CompareError, match="neither a run"):
        compare.compare("a", "missing", root=tmp_path)
