# Stage 5: the experiment's leaderboard tables, plots and report, rebuilt from its runs' metrics files alone. The
# inputs are ancient(): a run folder's identity says what it holds, so checkout order or a rebuilt data/ never makes
# a current leaderboard stale; a (re)trained run still re-aggregates, as a job that ran upstream, and a change of the
# grid or of the leaderboard settings renames the view's runs-<id>.json, a missing output.
localrules: aggregate


# What Snakemake's own `--report` shows (docs/workflow.md): output file name -> (caption, category); the accuracy plots
# go under "Plots", the runs-<id>.json record is not shown.
REPORTED = {
    "report.html": ("../report/report_html.rst", "Leaderboard"),
    "leaderboard.md": ("../report/leaderboard.rst", "Leaderboard"),
    "leaderboard.csv": ("../report/leaderboard.rst", "Leaderboard"),
    "leaderboard.tex": ("../report/leaderboard.rst", "Leaderboard"),
    "agreement.csv": ("../report/agreement.rst", "Leaderboard"),
    ".png": ("../report/accuracy_plot.rst", "Plots"),
}


rule aggregate:
    input:
        [ancient(run_metrics(spec)) for spec in RUNS],
    output:
        [
            report(f, *next(v for k, v in REPORTED.items() if f.endswith(k))) if f.endswith(tuple(REPORTED)) else f
            for f in experiment_outputs()
        ],
    log:
        paths.AGGREGATE_LOG.format(experiment=EXPERIMENT),
    params:
        py=PY,
        config=CONFIG_ARGS,
    conda:
        ENV
    shell:
        "{params.py} -m benchmark aggregate {params.config} > {log} 2>&1"
