"""What the steps say while they run, and what a DAG run says when it ends.

- ``setup``: the one ``logging`` configuration, made by the CLI's ``main``: the ``benchmark`` loggers write short
  lines (``14:02:07 message``) to stderr, at INFO unless ``-v``/``-q`` or ``$BENCHMARK_LOG_LEVEL`` say otherwise.
  Library modules log through ``logging.getLogger(__name__)``; a library caller that configures nothing sees nothing.
- ``progress`` / ``bar``: tqdm progress bars for the long steps, shown only when a person watches: stderr is a
  terminal (a Snakemake job writes its log to a file, which never gets one) and the level is INFO or more verbose;
  ``$BENCHMARK_PROGRESS=0|1`` forces them off or on. Log lines written while a bar runs are printed above it.
- ``dag_summary`` / ``dry_run_summary``: the closing lines of ``python -m benchmark run`` (and of the ``summary``
  step): how many runs of the experiment are ok / failed / not run / n/a, where the leaderboard and report are, and
  which jobs failed with their logs; for a dry run, the number of jobs per rule instead of Snakemake's full plan.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, TextIO, TypeVar

ROOT_LOGGER = "benchmark"
LEVEL_ENV = "BENCHMARK_LOG_LEVEL"  # e.g. DEBUG, INFO, WARNING (flags win over it)
PROGRESS_ENV = "BENCHMARK_PROGRESS"  # 1: bars even without a terminal, 0: never
DEBUG_ENV = "BENCHMARK_DEBUG"  # 1: user errors show their traceback too (as --debug)

T = TypeVar("T")
LOG = logging.getLogger(__name__)


class _Formatter(logging.Formatter):
    """``HH:MM:SS message``; warnings and debug lines say so (``warning: ...``)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            message = f"{record.levelname.lower()}: {message}"
        elif record.levelno < logging.INFO:
            message = f"debug: {message}"
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {message}"


class _Handler(logging.Handler):
    """Writes to the current ``sys.stderr`` (looked up per line, so a redirected or captured stderr is honoured),
    through tqdm while a bar is on screen so that the line lands above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            tqdm = sys.modules.get("tqdm")
            if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
                tqdm.tqdm.write(message, file=sys.stderr)
            else:
                sys.stderr.write(message + "\n")
                sys.stderr.flush()
        except Exception:  # a logging failure must never stop a step
            self.handleError(record)


def setup(verbosity: int = 0) -> int:
    """Configure the ``benchmark`` loggers (idempotent): ``verbosity`` 1 = DEBUG (``-v``), -1 = WARNING (``-q``),
    0 = ``$BENCHMARK_LOG_LEVEL`` or INFO. Returns the level."""
    if verbosity > 0:
        level = logging.DEBUG
    elif verbosity < 0:
        level = logging.WARNING
    else:
        name = os.environ.get(LEVEL_ENV, "INFO").strip().upper()
        level = logging.getLevelName(name) if isinstance(logging.getLevelName(name), int) else logging.INFO
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _Handler)]:
        logger.removeHandler(handler)
    handler = _Handler()
    handler.setFormatter(_Formatter())
    logger.addHandler(handler)
    logger.setLevel(level)
    return level


def progress_enabled(stream: TextIO | None = None) -> bool:
    """Whether to draw progress bars: ``$BENCHMARK_PROGRESS`` if set, else only on a terminal (``stream``, default
    stderr) and while INFO lines are shown (not with ``-q``, nor in a library that configured no logging)."""
    forced = os.environ.get(PROGRESS_ENV, "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    if not logging.getLogger(ROOT_LOGGER).isEnabledFor(logging.INFO):
        return False
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class _NoBar:
    """What ``bar`` returns when no bar is drawn: every call does nothing."""

    n = 0

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def bar(
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    initial: float = 0,
    leave: bool = False,
    unit_scale: bool = False,
    file: TextIO | None = None,
    show: bool | None = None,
) -> Any:
    """A manually updated bar (``.update(n)``, ``.close()``), or one that does nothing when bars are off (``show``:
    False for none, None to decide by ``progress_enabled``)."""
    if not (progress_enabled(file) if show is None else show):
        return _NoBar()
    return _tqdm(None, file, total=total, desc=desc, unit=unit, initial=initial, leave=leave, unit_scale=unit_scale)


def _tqdm(iterable: Iterable[T] | None, file: TextIO | None, **options: Any) -> Any:
    """A tqdm bar on ``file`` (stderr by default), its width following the terminal's."""
    from tqdm import tqdm

    return tqdm(iterable, file=sys.stderr if file is None else file, dynamic_ncols=True, disable=False, **options)


def progress(
    iterable: Iterable[T],
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    leave: bool = False,
    file: TextIO | None = None,
) -> Iterable[T]:
    """``iterable`` with a bar while it is consumed; the iterable itself (untouched) when bars are off, so that the
    work done is the same either way."""
    if not progress_enabled(file):
        return iterable
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _tqdm(iterable, file, total=total, desc=desc, unit=unit, leave=leave)


def milestones(total: int, parts: int = 10) -> set[int]:
    """The counts (1-based) at which a step without a bar logs its progress: the first to reach each 10%."""
    return {-(-total * k // parts) for k in range(1, parts + 1)} - {0}


# --- the end of a DAG run ----------------------------------------------------------------------------------------

#: how many entries of each list the summary shows before "... and N more"
SHOWN = 10


@dataclass
class FailedJob:
    rule: str
    output: str
    log: str


def latest_snakemake_log(workdir: Path = Path(".")) -> Path | None:
    """Snakemake's log of the last (non-dry) run in ``workdir``, if any."""
    logs = sorted((Path(workdir) / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1] if logs else None


def snakemake_failures(log_file: Path) -> list[FailedJob]:
    """The ``Error in rule`` blocks of a Snakemake log: each failed job's rule, output and log files."""
    jobs, current = [], None
    for line in Path(log_file).read_text(errors="replace").splitlines():
        start = re.match(r"Error in rule (\S+?):\s*$", line)
        if start:
            current = FailedJob(start.group(1), "", "")
            jobs.append(current)
            continue
        if current is None:
            continue
        field = re.match(r"\s{4}(\w+): (.*)$", line)
        if field and field.group(1) in ("output", "log"):
            value = field.group(2).replace("(check log file(s) for error details)", "").strip()
            setattr(current, field.group(1), value)
        elif not line.startswith(" "):
            current = None
    return jobs


def _leaderboard_rows(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            status = (row.get("status") or "?").split(":")[0]
            counts[status] = counts.get(status, 0) + 1
    return counts


def _more(lines: list[str], shown: int = SHOWN) -> list[str]:
    return lines[:shown] + ([f"    ... and {len(lines) - shown} more"] if len(lines) > shown else [])


def dag_summary(
    cfg: dict, root: Path = Path("."), snakemake_log: Path | None = None, returncode: int | None = None
) -> list[str]:
    """The closing lines of a DAG run of ``cfg``'s experiment in ``root``: the runs' statuses (their metrics.json),
    the jobs that failed (from Snakemake's log) with their logs, the runs left without a result, and where the
    leaderboard and report are."""
    from benchmark.grid import grid_runs
    from benchmark.paths import RUN_LOG, experiment_dir
    from benchmark.settings import Resolver

    root = Path(root)
    jobs = snakemake_failures(snakemake_log) if snakemake_log is not None and Path(snakemake_log).exists() else []
    failed_outputs = {Path(out.strip()) for job in jobs for out in job.output.split(",")}
    runs, skipped = grid_runs(cfg)
    resolver = Resolver(cfg)
    statuses: dict[str, int] = {"ok": 0, "failed": 0, "not run": 0}
    failed, missing = [], []
    for spec in runs:
        folder = resolver.run(spec).path
        name = f"{spec.method} {spec.dataset}/{spec.fold}/{spec.backbone}/{spec.fusion} seed {spec.seed}"
        log = folder / Path(RUN_LOG).name
        metrics = folder / "metrics.json"
        if not (root / metrics).exists():
            statuses["not run"] += 1
            if metrics not in failed_outputs:  # a failed job's run is listed with the job
                missing.append(f"    {name}: {log if (root / log).exists() else folder}")
            continue
        record = json.loads((root / metrics).read_text())
        status = record.get("status", "?")
        statuses[status] = statuses.get(status, 0) + 1
        if status != "ok":
            failed.append(f"    {name}: {record.get('reason', '')} ({log})")
    counts = ", ".join(f"{n} {s}" for s, n in statuses.items() if n or s != "not run")
    lines = [f"experiment '{cfg['experiment']}': {len(runs) + len(skipped)} runs: {counts}, {len(skipped)} n/a"]
    if failed:
        lines += ["  runs that failed (status in their metrics.json):", *_more(failed)]
    if jobs:
        lines.append(f"  jobs that failed ({len(jobs)}; Snakemake's log: {snakemake_log}):")
        lines += _more([f"    {j.rule}: {j.log}" if j.log else f"    {j.rule}: {j.output} (no log)" for j in jobs])
    elif returncode:
        where = f"Snakemake's log {snakemake_log}" if snakemake_log else "Snakemake's output above"
        lines.append(f"  Snakemake stopped without a failed job: see {where}")
    if missing and len(missing) == len(runs):
        lines.append("  no run has a result yet (the DAG makes them: python -m benchmark run)")
    elif missing:
        lines += ["  runs without a result" + (" (not run: upstream jobs failed?)" if jobs else "") + ":"]
        lines += _more(missing)
    out = experiment_dir(cfg["experiment"])
    if (root / out / "leaderboard.csv").exists():
        rows = _leaderboard_rows(root / out / "leaderboard.csv")
        shown = ", ".join(f"{n} {s}" for s, n in rows.items())
        lines.append(f"  leaderboard: {out / 'leaderboard.md'} (also .csv, .tex; {sum(rows.values())} rows: {shown})")
    else:
        lines.append(f"  leaderboard: not built yet ({out / 'leaderboard.csv'})")
    report = out / "report.html"
    lines.append(f"  report: {report}" if (root / report).exists() else f"  report: not built yet ({report})")
    return lines


def job_stats(output: str) -> dict[str, int]:
    """The last ``Job stats`` table of Snakemake's output: rule -> number of jobs (without the total)."""
    if "Job stats:" not in output:
        return {}
    table = output.rsplit("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[1:]:
        if not line.strip():
            break
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if match and match.group(1) not in ("job", "total"):
            counts[match.group(1)] = int(match.group(2))
    return counts


#: how to see Snakemake's own, complete dry-run output (run_dag passes it through instead of summarising)
FULL_PLAN_FLAG = "--full"


def dry_run_summary(output: str) -> list[str]:
    """A few lines for a dry run: the jobs per rule and their total, and how to see every job."""
    hint = (
        f"every job with its files and reason: python -m benchmark run -n {FULL_PLAN_FLAG} (or bash run.sh -n "
        f"{FULL_PLAN_FLAG}); add -p for the shell commands"
    )
    if "Nothing to be done" in output:
        return ["dry run: nothing to do: every output is current", hint]
    counts = job_stats(output)
    width = max([len(rule) for rule in counts] + [5])
    lines = [f"dry run: {sum(counts.values())} jobs would run"]
    lines += [f"  {rule:<{width}}  {n:>5}" for rule, n in counts.items()]
    lines.append(f"  {'total':<{width}}  {sum(counts.values()):>5}")
    if "download" in counts or "balance" in counts:
        lines.append("  (and one preprocess_shard job per shard, known once the manifest is made)")
    lines.append(hint)
    return lines
