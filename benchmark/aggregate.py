"""The aggregate step: an experiment's tables, plots and report, rebuilt from its runs' metrics files alone."""

from __future__ import annotations

from pathlib import Path

from benchmark import paths
from benchmark.events import history_table
from benchmark.leaderboard import agreement, load_runs, summarize, to_latex, to_markdown
from benchmark.report import write_report
from benchmark.run import write_json
from benchmark.settings import experiment_record


def aggregate(cfg: dict, out_dir: Path, root: Path = Path(".")) -> "pd.DataFrame":  # noqa: F821
    """Rebuild every table, plot and the report of ``cfg``'s experiment in ``out_dir`` from the metrics files under
    ``root``; a metrics file made with other settings than the config gives is refused (``StaleResult``)."""
    out_dir = Path(out_dir)
    board = cfg.get("leaderboard", {})
    runs, records = load_runs(cfg, root)  # before writing anything: a refused run leaves the old outputs alone
    summary = summarize(runs, board.get("reference", "joint"), board.get("alpha", 0.05))
    agree = agreement(cfg, runs, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_csv(out_dir / "leaderboard.csv", index=False, float_format="%.6g")
    agree.to_csv(out_dir / "agreement.csv", index=False, float_format="%.6g")
    history_table(records).to_csv(out_dir / "history.csv", index=False, float_format="%.6g")  # for pandas
    (out_dir / "leaderboard.md").write_text(to_markdown(summary, cfg, agree, runs=runs))
    (out_dir / "leaderboard.tex").write_text(to_latex(summary, cfg, runs=runs))
    write_report(cfg, summary, runs, records, agree, out_dir)
    record = experiment_record(cfg)
    for stale in out_dir.glob("runs-*.json"):  # the view has one list of runs: this one
        stale.unlink()
    write_json(out_dir / paths.fill(paths.EXPERIMENT_RECORD, experiment="x", id=record["identity"]).name, record)
    return summary
