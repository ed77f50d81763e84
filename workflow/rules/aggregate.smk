# Stage 5: leaderboard tables and plots, rebuilt from the metrics files alone.
localrules: aggregate


rule aggregate:
    input:
        [run_file(spec, "metrics.json") for spec in RUNS],
    output:
        leaderboard_outputs(),
    log:
        "results/logs/aggregate.log",
    params:
        grid=settings_hash({"runs": [str(s) for s in RUNS], "not_applicable": [str(s) for s, _ in NOT_APPLICABLE]}),
    shell:
        "{PY} -m benchmark aggregate --config {CONFIG_FILE} --out-dir results > {log} 2>&1"
