"""``python -m benchmark <step>``: every DAG step, runnable by hand with the same arguments Snakemake uses.

Every step reads the config the same way as the DAG: ``config.yaml`` (or the packaged default), then each
``--config`` overlay in order, then each ``--set key.path=value``. Every step logs to stderr (``-v`` for more,
``-q`` for warnings only, ``$BENCHMARK_LOG_LEVEL``) with progress bars when run on a terminal; a mistake a user can
make (an unknown name, a missing input, a bad config) is answered in one ``error: ...`` line naming the fix, exit
status 2 (``--debug`` or ``$BENCHMARK_DEBUG=1`` adds the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import sys
from pathlib import Path

# Only light modules here: `python -m benchmark list ...` must start without torch. Every step imports what it
# needs (benchmark.config imports benchmark.components, hence every component and torch) when it runs.
from benchmark import logs, paths
from benchmark.registry import UnknownNameError

LOG = logging.getLogger(__name__)
#: the grid's axes, as benchmark.components.AXES (not imported from there: it imports every component)
AXES = ("datasets", "backbones", "fusions", "balancers")


class UserError(Exception):
    """A request the config or the command line cannot satisfy: one ``error:`` line, no traceback."""


def load_config(args: argparse.Namespace) -> dict:
    from benchmark.config import load_config as load_layers

    return load_layers(args.config or [], args.set or [])


class IdentityMismatch(ValueError):
    """A job asked for a result folder whose identity is not the one the config gives."""


def _resolve(args: argparse.Namespace, cfg: dict, step):
    from benchmark.settings import Resolver

    resolver = Resolver(cfg)
    resolved = resolver.resolve(step)
    if getattr(args, "id", None) and args.id != resolved.identity:
        raise IdentityMismatch(
            f"the job asks for identity {args.id}, but the config gives {resolved.identity} for this "
            f"{step.kind} (the config changed while the DAG ran?); rerun snakemake"
        )
    return resolver, resolved


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def cmd_list(args: argparse.Namespace) -> None:
    from benchmark.catalog import entries, format_table  # reads the sources: no torch, no component imports

    items = entries(args.axis)
    print("\n".join(e.name for e in items) if args.names else format_table(items, wrap=args.long))


def cmd_compare(args: argparse.Namespace) -> None:
    from benchmark.compare import compare

    print(compare(args.a, args.b, metric=args.metric))


def cmd_events(args: argparse.Namespace) -> None:
    from benchmark.events import EVENTS_DIR, backfill

    written = backfill([Path(p) for p in args.paths] or [Path("results/runs")])
    print(f"wrote {len(written)} event files (<run>/{EVENTS_DIR}/)")


def cmd_check(args: argparse.Namespace) -> None:
    from benchmark.grid import grid_runs

    cfg = load_config(args)
    runs, skipped = grid_runs(cfg)
    combos = dict.fromkeys((f"{s.dataset}/{s.backbone}/{s.fusion}/{s.method}", reason) for s, reason in skipped)
    layers = " + ".join(
        ["config.yaml" if Path("config.yaml").exists() else "packaged config.yaml", *(args.config or [])]
    )
    print(
        f"{layers}: valid; experiment '{cfg['experiment']}'; {len(runs)} training runs, {len(combos)} combinations not "
        "applicable"
    )
    if cfg["tuning"]["enabled"]:
        groups = {(s.dataset, s.fold, s.backbone, s.fusion, s.method) for s in runs}
        print(
            f"  tuning: {len(groups)} groups x {cfg['tuning']['trials']} trials = "
            f"{len(groups) * cfg['tuning']['trials']} trial jobs"
        )
    for combo, reason in combos:
        print(f"  n/a: {combo}: {reason}")


def _dirs(cfg: dict, dataset: str):
    from benchmark.config import component_class
    from benchmark.settings import dataset_dirs

    component_class(cfg, "datasets", dataset)  # an unknown name: the registry's error
    return dataset_dirs(cfg, dataset)


def cmd_download(args: argparse.Namespace) -> None:
    from benchmark.config import component_class, dataset_settings

    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    out = Path(args.out or _dirs(cfg, args.dataset).raw)
    cls(dataset_settings(cfg, args.dataset)).download(out, workers=args.workers)
    print(f"wrote {out / 'manifest.csv'}")


def cmd_balance(args: argparse.Namespace) -> None:
    from benchmark.config import dataset_settings
    from benchmark.data.balance import balance_manifest

    cfg = load_config(args)
    params = dataset_settings(cfg, args.dataset).get("balance")
    if not params:
        raise UserError(f"dataset '{args.dataset}' has no 'balance' section in the config")
    dirs = _dirs(cfg, args.dataset)
    balance_manifest(
        Path(args.raw or dirs.raw),
        params["min_class_volume"],
        params["target_class_volume"],
        params.get("seed", 0),
        manifest=dirs.manifest,
        report_name=dirs.balance_report,
    )


def cmd_preprocess(args: argparse.Namespace) -> None:
    from benchmark.config import component_class, dataset_settings
    from benchmark.data.preprocess import gather_shards, preprocess, preprocess_shard

    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    settings = dataset_settings(cfg, args.dataset)
    dirs = _dirs(cfg, args.dataset)
    where = dict(
        dataset=cls(settings),
        raw_dir=Path(args.raw or dirs.raw),
        out_dir=Path(args.out or dirs.processed),
        pre=settings["preprocess"],
        shard_clips=cfg["resources"]["preprocess"]["shard_clips"],
        manifest=dirs.manifest,
    )
    if args.shard is not None:
        record = preprocess_shard(shard=args.shard, workers=args.workers, **where)
        print(f"shard {args.shard}: cached {len(record['clip_ids'])} clips ({len(record['rejected'])} rejected)")
        return
    info = gather_shards(**where) if args.gather else preprocess(workers=args.workers, **where)
    print(f"cached {info['clips']} clips in {len(info['shards'])} shards ({info['rejected']} rejected)")


def cmd_split(args: argparse.Namespace) -> None:
    from benchmark.config import component_class, dataset_settings
    from benchmark.data.splits import write_splits

    cfg = load_config(args)
    cls = component_class(cfg, "datasets", args.dataset)
    dirs = _dirs(cfg, args.dataset)
    write_splits(
        cls(dataset_settings(cfg, args.dataset)),
        Path(args.raw or dirs.raw),
        Path(args.processed or dirs.processed),
        folds=[args.fold] if args.fold else None,
        manifest=dirs.manifest,
        splits_dir=None if args.processed else dirs.splits,
    )


def cmd_estimate(args: argparse.Namespace) -> None:
    from benchmark.estimate import estimate_gblend
    from benchmark.grid import RunSpec
    from benchmark.settings import Step

    _threads(args.threads)
    cfg = load_config(args)
    spec = RunSpec(args.dataset, args.backbone, args.fusion, "gblend", args.seed, args.modalities, args.fold)
    resolver, resolved = _resolve(args, cfg, Step("estimate", spec))
    estimate_gblend(
        cfg,
        args.dataset,
        args.backbone,
        args.fusion,
        args.seed,
        Path(args.out or resolved.path),
        fold=args.fold,
        modality=args.modalities,
        resolver=resolver,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from benchmark.config import component_class
    from benchmark.grid import RunSpec
    from benchmark.run import train_run
    from benchmark.settings import Step

    _threads(args.threads)
    cfg = load_config(args)
    spec = RunSpec.from_method(args.dataset, args.backbone, args.fusion, args.method, args.seed, args.fold)
    component_class(cfg, "balancers", spec.balancer)
    resolver, resolved = _resolve(args, cfg, Step("run", spec))
    out_dir = Path(args.out_dir or resolved.path)
    try:
        train_run(cfg, spec, out_dir, resolver=resolver)
    except Exception:
        # the scheduler may replace train.log when it retries the job; this file keeps why each attempt died
        import datetime
        import traceback

        out_dir.mkdir(parents=True, exist_ok=True)
        with open(out_dir / "failed-attempts.log", "a") as f:
            f.write(f"--- {datetime.datetime.now().isoformat(timespec='seconds')}\n{traceback.format_exc()}")
        raise


def _group(args: argparse.Namespace, trial: int | None = None):
    """A tuning group's config, spec, resolver and resolved selection step; ``--id`` names the group's identity (its
    folder), which both its trials and its selection are asked for."""
    from benchmark.grid import RunSpec
    from benchmark.settings import Step

    cfg = load_config(args)
    if not cfg["tuning"]["enabled"]:
        raise UserError("tuning.enabled is false in the config: there is nothing to tune")
    spec = RunSpec.from_method(
        args.dataset, args.backbone, args.fusion, args.method, cfg["tuning"]["train_seed"], args.fold
    )
    if trial is not None and not 0 <= trial < cfg["tuning"]["trials"]:
        raise UserError(f"--trial must be in 0..{cfg['tuning']['trials'] - 1} (tuning.trials)")
    resolver, group = _resolve(args, cfg, Step("tune_best", spec))
    return cfg, spec, resolver, group


def cmd_tune_trial(args: argparse.Namespace) -> None:
    from benchmark.tuning import run_trial

    _threads(args.threads)
    cfg, spec, resolver, group = _group(args, args.trial)
    run_trial(cfg, spec, args.trial, Path(args.out) if args.out else None, resolver=resolver)


def cmd_tune_select(args: argparse.Namespace) -> None:
    from benchmark.tuning import select_best

    cfg, spec, resolver, group = _group(args)
    select_best(cfg, spec, Path(args.out) if args.out else None, resolver=resolver)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from benchmark.aggregate import aggregate
    from benchmark.paths import experiment_dir

    cfg = load_config(args)
    out_dir = Path(args.out_dir or experiment_dir(cfg["experiment"]))
    summary = aggregate(cfg, out_dir)
    print(f"wrote {out_dir / 'leaderboard.md'} ({len(summary)} rows)")


def cmd_prune(args: argparse.Namespace) -> None:
    from benchmark.prune import prune

    configs = [load_config(args)] if args.config or args.set else []
    prune(Path("."), configs, args.delete)


def cmd_summary(args: argparse.Namespace) -> None:
    cfg = load_config(args)
    log = Path(args.snakemake_log) if args.snakemake_log else logs.latest_snakemake_log()
    print("\n".join(logs.dag_summary(cfg, Path("."), log)))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    chatter = argparse.ArgumentParser(add_help=False)  # every step's logging options
    level = chatter.add_mutually_exclusive_group()
    level.add_argument(
        "-v",
        "--verbose",
        action="store_const",
        const=1,
        default=0,
        dest="verbosity",
        help=f"debug lines too (or ${logs.LEVEL_ENV}=DEBUG)",
    )
    level.add_argument(
        "-q",
        "--quiet",
        action="store_const",
        const=-1,
        dest="verbosity",
        help="warnings and errors only, no progress bars",
    )
    chatter.add_argument(
        "--debug", action="store_true", help=f"show the traceback of user errors too (or ${logs.DEBUG_ENV}=1)"
    )

    def add(name: str, fn, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, parents=[chatter])
        sp.set_defaults(fn=fn)
        if name not in ("list", "compare", "events"):
            sp.add_argument(
                "--config",
                action="append",
                metavar="FILE",
                help="a config overlay, layered over config.yaml in the order given (repeatable)",
            )
            sp.add_argument(
                "--set",
                action="append",
                metavar="KEY=VALUE",
                help="a typed override, e.g. train.epochs=2 (the value parsed as YAML; repeatable)",
            )
        return sp

    sp = add("list", cmd_list, "print one axis's built-in components: name, description, paper")
    sp.add_argument("axis", choices=(*AXES, "input_kinds"))
    shape = sp.add_mutually_exclusive_group()
    shape.add_argument("--long", action="store_true", help="the whole first sentence and paper, wrapped")
    shape.add_argument("--names", action="store_true", help="only the names, one per line (for scripts)")
    sp = add("compare", cmd_compare, "two experiments' leaderboards, or two runs, side by side")
    sp.add_argument("a", help="an experiment (a folder with leaderboard.csv, or its name in results/) or a run folder")
    sp.add_argument("b", help="the same kind as A")
    sp.add_argument(
        "--metric", default="test_acc", help="experiments: the leaderboard column stem to compare (default: test_acc)"
    )
    sp = add("events", cmd_events, "write TensorBoard event files (<run>/tensorboard/) from runs' metrics files")
    sp.add_argument("paths", nargs="*", help="run folders, metrics files or folders to search (default: results/runs)")
    add("check", cmd_check, "validate the config and count the grid's runs")
    for name, fn, help in (
        ("download", cmd_download, "obtain a dataset's raw clips and manifest"),
        ("preprocess", cmd_preprocess, "decode clips into cached tensor shards (missing shards only), then index them"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--workers", type=int, default=1)
        sp.add_argument(
            "--out", help="output folder (default: data/raw/<dataset>/<raw id> or data/processed/<dataset>/<cache id>)"
        )
        if name == "preprocess":
            sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
            only = sp.add_mutually_exclusive_group()
            only.add_argument(
                "--shard", type=int, help="decode only shard K (0-based; resources.preprocess.shard_clips rows each)"
            )
            only.add_argument("--gather", action="store_true", help="only index the shards already made")
    sp = add(
        "balance",
        cmd_balance,
        "Algorithm 1 of the G-Blend supplement on a multi-label manifest (datasets.<name>.balance)",
    )
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
    sp = add("split", cmd_split, "write the train/val/test assignment of every fold (splits/<fold>.csv)")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--raw", help="raw folder (default: data/raw/<dataset>/<raw id>)")
    sp.add_argument(
        "--processed",
        help="processed folder (default: data/processed/<dataset>/<cache id>, splits in its splits/<split id>/)",
    )
    sp.add_argument("--fold", help="only this fold (default: every fold of the dataset)")
    for name, fn, help in (
        ("estimate", cmd_estimate, "estimate G-Blend weights for one dataset/fold/backbone/fusion/seed"),
        ("train", cmd_train, "train and evaluate one run of the grid"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main", help="the dataset's fold (default: main)")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True, help="a fusion name, or 'none' for per-modality methods")
        sp.add_argument("--seed", type=int, required=True)
        sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
        if name == "train":
            sp.add_argument(
                "--method",
                required=True,
                help="balancer name, or '<balancer>-<modalities>' (e.g. unimodal-audio, joint-visual+flow)",
            )
            sp.add_argument(
                "--out-dir",
                help="default: the run's folder, "
                "results/runs/<dataset>/<fold>/<backbone>/<fusion>/<method>/seed<seed>-<id>",
            )
        else:
            sp.add_argument(
                "--out",
                help="default: "
                "results/gblend/<dataset>/<fold>/<backbone>/<fusion>/gblend[-<subset>]/seed<seed>-<id>.json",
            )
            sp.add_argument("--modalities", help="a '+'-joined subset of the dataset's modalities (default: all)")
        sp.add_argument("--id", help="the identity the job expects (the DAG passes it); a different one is an error")
    for name, fn, help in (
        (
            "tune-trial",
            cmd_tune_trial,
            "train one tuning trial of a dataset/fold/backbone/fusion/method, scored on validation",
        ),
        ("tune-select", cmd_tune_select, "pick a group's best trial (best.json)"),
    ):
        sp = add(name, fn, help)
        sp.add_argument("--dataset", required=True)
        sp.add_argument("--fold", default="main")
        sp.add_argument("--backbone", required=True)
        sp.add_argument("--fusion", required=True)
        sp.add_argument("--method", required=True)
        sp.add_argument(
            "--out",
            help="default: results/tuning/<dataset>/<fold>/<backbone>/<fusion>/<method>/<id>/trial<k>.json (best.json)",
        )
        sp.add_argument("--id", help="the tuning's identity the job expects (the DAG passes it)")
        if name == "tune-trial":
            sp.add_argument("--trial", type=int, required=True)
            sp.add_argument("--threads", type=int, default=1, help="CPU threads for torch")
    sub.add_parser("perf", help="the performance benchmark (python -m benchmark perf --help)", add_help=False)
    sub.add_parser(
        "run",
        help="the whole DAG here (snakemake with the package's Snakefile; --set key=value overrides)",
        add_help=False,
    )
    sp = add(
        "prune",
        cmd_prune,
        "list (or --delete) the results no experiment uses (experiments: results/*/runs-*.json and the configs given)",
    )
    sp.add_argument("--delete", action="store_true", help="remove them (default: only list them)")
    sp = add("aggregate", cmd_aggregate, "build the experiment's leaderboard and plots from its runs' metrics files")
    sp.add_argument("--out-dir", help="default: results/<experiment>")
    sp = add(
        "summary",
        cmd_summary,
        "the experiment's runs (ok / failed / not run / n/a), leaderboard and report, and the jobs that failed in "
        "the last DAG run with their logs (what `python -m benchmark run` prints when it ends)",
    )
    sp.add_argument("--snakemake-log", help="Snakemake's log of the run (default: the newest in .snakemake/log/)")
    return p


#: Snakemake options that run no job (lint, listings, reports, graphs): no closing summary after them
NOT_A_RUN = frozenset(
    """--lint --unlock --dag --rulegraph --filegraph --d3dag --summary -S --detailed-summary -D --version -v --help -h
    --list-rules -l --list-target-rules --lt --list-changes --lc --list-input-changes --li --list-params-changes --lp
    --list-untracked --lu --list-code-changes --archive --cleanup-metadata --cm --cleanup-shadow --report --export-cwl
    --containerize --generate-unit-tests --delete-all-output --delete-temp-output --print-compilation --touch -t
    --list-conda-envs --conda-create-envs-only --conda-cleanup-envs --draft-notebook --edit-notebook""".split()
)
#: Snakemake options that ask for its own output of a dry run: then it is shown as it is, not summarised
VERBOSE = frozenset(("-p", "--printshellcmds", "--quiet", "-q", "--verbose", "--debug-dag", *NOT_A_RUN))


def _short_flags(arg: str) -> str:
    """The letters of a cluster of short flags (``-np`` -> ``np``), else ''."""
    return arg[1:] if re.fullmatch(r"-[A-Za-z]+", arg) else ""


def _option_values(args: list[str], *names: str) -> list[str]:
    """The values given to Snakemake options taking one or more (``--configfile a.yaml b.yaml``, ``--config=k=v``)."""
    values, i = [], 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if name in names:
            if eq:
                values.append(value)
            else:
                while i + 1 < len(args) and not args[i + 1].startswith("-"):
                    i += 1
                    values.append(args[i])
        i += 1
    return values


def _summary(rest: list[str], sets: list[str], workdir: Path, started: float, seconds: float, returncode: int) -> None:
    """The closing summary of a DAG run (started at time ``started``, ``seconds`` long), read with the config the run
    had (its --configfile and --config too)."""
    overlays = [str(Path(f).resolve()) for f in _option_values(rest, "--configfile", "--configfiles")]
    sets = [*sets, *(v for v in _option_values(rest, "--config", "-C") if not v.startswith("set="))]
    log = logs.latest_snakemake_log(workdir)
    log = log if log is not None and log.stat().st_mtime >= started - 1 else None
    try:
        from benchmark.config import load_config as load_layers

        os.chdir(workdir)  # where Snakemake read config.yaml and wrote the results
        lines = logs.dag_summary(load_layers(overlays, sets), Path("."), log, returncode)
    except Exception as err:  # the summary must never hide Snakemake's own exit status
        lines = [f"(no summary: {type(err).__name__}: {err})"]
    outcome = "finished" if returncode == 0 else f"failed (exit status {returncode})"
    print(f"\nDAG run {outcome} after {seconds / 60:.1f} min:", *lines, sep="\n", flush=True)


def _dry_run(cmd: list[str]) -> int:
    """Snakemake's dry run, quiet, summarised in a few lines (the full plan: ``--full``)."""
    import subprocess

    res = subprocess.run([*cmd, "--quiet", "rules"], capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stdout + res.stderr)
        return res.returncode
    print("\n".join(logs.dry_run_summary(res.stdout + res.stderr)))
    return 0


def run_dag(argv: list[str]) -> int:
    """``python -m benchmark run [--set key=value ...] [--full] [snakemake options]``: the whole DAG in the working
    directory, with the package's Snakefile and default profile; ``--set`` overrides reach every step as they reach
    the DAG. A run ends with a summary (``logs.dag_summary``); a dry run (``-n``) prints the jobs per rule, or, with
    ``--full`` (or Snakemake's ``-p``/``--quiet``/``--verbose``), Snakemake's complete plan."""
    import json
    import signal
    import subprocess
    import time

    from benchmark.resources import resource

    sets, rest, args, full = [], [], list(argv), False
    while args:
        arg = args.pop(0)
        if arg == "--set":
            if not args:
                print("error: --set needs key.path=value", file=sys.stderr)
                return 2
            sets.append(args.pop(0))
        elif arg.startswith("--set="):
            sets.append(arg.partition("=")[2])
        elif arg == logs.FULL_PLAN_FLAG:
            full = True
        else:
            rest.append(arg)
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(resource("Snakefile")),
        "--workflow-profile",
        str(resource("workflow/profiles/default")),
        *rest,
    ]
    if sets:
        cmd += ["--config", "set=" + json.dumps(sets)]
    dry = any(a in ("-n", "--dry-run", "--dryrun") or "n" in _short_flags(a) for a in rest)
    verbose = any(a.partition("=")[0] in VERBOSE or "p" in _short_flags(a) for a in rest)
    if dry and not full and not verbose:
        return _dry_run(cmd)
    workdir = Path((_option_values(rest, "--directory", "-d") or ["."])[-1])
    started, t0 = time.time(), time.monotonic()
    job = subprocess.Popen(cmd)
    # Ctrl-C reaches Snakemake from the terminal (it stops its jobs and exits): wait for it, then summarise; a
    # scheduler's SIGTERM reaches this process only, so it is passed on
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda sig, _: job.send_signal(sig))
    try:
        code = job.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    code = 128 - code if code < 0 else code  # killed by a signal: the shell's convention
    if not dry and not any(a.partition("=")[0] in NOT_A_RUN for a in rest):
        _summary(rest, sets, workdir, started, time.monotonic() - t0, code)
    return code


def _step_command(step: str, args: argparse.Namespace, **options: object) -> str:
    """A step's command line with the user's config layers, for a hint."""
    parts = ["python -m benchmark", step]
    parts += [f"--config {shlex.quote(c)}" for c in getattr(args, "config", None) or []]
    parts += [f"--set {shlex.quote(c)}" for c in getattr(args, "set", None) or []]
    parts += [f"--{k.replace('_', '-')} {v}" for k, v in options.items() if v is not None]
    return " ".join(parts)


def _template(template: str) -> re.Pattern:
    """A paths.py template as a pattern matching the end of a path, its fields as named groups."""
    pieces = re.split(r"(\{\w+\})", template)
    body = "".join(f"(?P<{p[1:-1]}>[^/]+?)" if p.startswith("{") else re.escape(p) for p in pieces)
    return re.compile(f"(?:^|/){body}$")


def missing_input_hint(path: str, args: argparse.Namespace) -> str | None:
    """What makes a missing artefact of the DAG: ``run `<the step's command>` first``; None for other files."""
    path = Path(path).as_posix()
    match = lambda template: _template(template).search(path)  # noqa: E731
    if m := match(paths.RAW_MANIFEST):
        return _step_command("download", args, dataset=m["dataset"])
    if m := match(paths.BALANCED_MANIFEST_FILE):
        return _step_command("balance", args, dataset=m["dataset"])
    for template in (paths.INFO_FILE, paths.INDEX_FILE, paths.SHARD_RECORD, paths.SHARD_TENSORS):
        if m := match(template):
            return _step_command("preprocess", args, dataset=m["dataset"])
    if m := match(paths.SPLIT_FILE):
        return _step_command("split", args, dataset=m["dataset"], fold=m["fold"])
    group = lambda m: dict(dataset=m["dataset"], fold=m["fold"], backbone=m["backbone"], fusion=m["fusion"])  # noqa: E731
    if m := match(paths.ESTIMATE_FILE):
        subset = m["method"].partition("-")[2] or None
        return _step_command("estimate", args, **group(m), seed=m["seed"], modalities=subset)
    if m := match(paths.TRIAL_FILE):
        return _step_command("tune-trial", args, **group(m), method=m["method"], trial=m["trial"])
    if m := match(paths.BEST_FILE):
        trial = _step_command("tune-trial", args, **group(m), method=m["method"], trial="K")
        select = _step_command("tune-select", args, **group(m), method=m["method"])
        return f"{trial}` for every trial K (tuning.trials), then `{select}"
    for name in ("metrics.json", "model.pt"):
        if m := match(f"{paths.RUN_DIR}/{name}"):
            return _step_command("train", args, **group(m), method=m["method"], seed=m["seed"])
    return None


def _missing_file(err: FileNotFoundError, args: argparse.Namespace) -> str:
    """One line for a missing file: the step that makes it when it is an artefact of the DAG."""
    path = err.filename
    if path is None:  # a message of ours that names the file
        found = re.search(r"(\S+\.(?:json|csv|pt))\b", str(err))
        path = found.group(1) if found else None
    hint = missing_input_hint(str(path), args) if path else None
    if hint:
        return f"{path} is missing: run `{hint}` first (or the whole DAG: python -m benchmark run)"
    return str(err) if err.filename is None else f"{err.filename} does not exist"


def _user_errors() -> tuple[type[BaseException], ...]:
    """The exception types a user causes. Looked up among the modules already imported: an error can only come from
    a module that ran, and importing the others here would cost what the lazy imports save."""
    known = [UserError, UnknownNameError, IdentityMismatch]
    for module, name in (
        ("benchmark.config", "ConfigError"),
        ("benchmark.data.sources", "SourceError"),
        ("benchmark.data.preprocess", "PreprocessError"),
        ("benchmark.data.splits", "SplitError"),
        ("benchmark.leaderboard", "StaleResult"),
        ("benchmark.compare", "CompareError"),
        ("benchmark.data.cache", "StaleCache"),
    ):
        if isinstance(found := getattr(sys.modules.get(module), name, None), type):
            known.append(found)
    return tuple(known)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["run"]:  # the DAG: every other option is Snakemake's
        return run_dag(argv[1:])
    if argv[:1] == ["perf"]:  # the performance benchmark has its own options
        from benchmark.perf import main as perf_main

        return perf_main(argv[1:])
    args = parser().parse_args(argv)
    logs.setup(args.verbosity)
    debug = args.debug or os.environ.get(logs.DEBUG_ENV, "") not in ("", "0")
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if isinstance(err, FileNotFoundError):
            message = _missing_file(err, args)
        elif isinstance(err, _user_errors()):
            message = str(err)
        else:
            raise  # a bug: the traceback is what helps
        if debug:
            LOG.exception("the traceback (--debug)")
        print(f"error: {message}", file=sys.stderr)  # bad input: one clear line, no traceback
        return 2
    return 0
