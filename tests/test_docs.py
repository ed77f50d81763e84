"""Every command shown in the docs is run by a test, and every link in them resolves.

The commands are the lines of the ```bash blocks of README.md and docs/*.md (one command per line; comments after
``#`` and line continuations handled). Each is either

- **cheap**: run here, in a copy of the repository, and it must exit 0 (listing what is registered, checking a
  config, comparing or summarising results, pruning without ``--delete``, ``--help``, dry runs and Snakemake's
  ``--report`` of the committed results); or
- **mapped**: listed in ``MAPPED`` below with the test that runs it (``tests/<file>.py::<function>``, or the CI
  script) and the parts of the command that the test's code must contain, which this file checks.

A command that is neither fails ``test_every_command_in_the_docs_is_run_by_a_test`` with what to do.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

#: commands that a test runs, by the command as the docs show it: (where: ``tests/<file>.py::<function>`` or a CI
#: script, the parts of the command that the test's code, or the code of the functions of its module it calls,
#: must contain)
MAPPED: dict[str, tuple[str, tuple[str, ...]]] = {
    # run.sh = `python -m benchmark run` = Snakemake with the default profile (test_run_sh_is_the_benchmark_run),
    # which the test runs on a tiny grid, as it does with an overlay
    "bash run.sh": (
        "tests/test_workflow.py::test_tiny_real_run_produces_a_leaderboard_and_is_idempotent",
        ("snakemake(", "workflow/profiles/default"),
    ),
    "bash run.sh --configfile configs/method-library.yaml": (
        "tests/test_workflow.py::test_tiny_real_run_produces_a_leaderboard_and_is_idempotent",
        ("snakemake(", '"--configfile"'),
    ),
    "bash test.sh": (".ci/run", ("bash test.sh",)),
    "GOLDEN_UPDATE=1 bash test.sh tests/test_golden.py": (
        "tests/test_golden.py::test_golden_grid_reproduces_its_committed_losses",
        ("GOLDEN_UPDATE",),
    ),
    "python -m benchmark train --dataset synthetic-av --backbone small_cnn --fusion concat --method ogm_ge --seed 0": (
        "tests/test_resume.py::test_sigkill_mid_training_then_rerun_resumes_to_identical_metrics",
        ('"benchmark"', '"train"', '"--dataset"', '"--backbone"', '"--fusion"', '"--method"', '"--seed"'),
    ),
    "python -m benchmark aggregate": (
        "tests/test_reruns.py::test_reruns_are_right_by_construction",
        ('"benchmark", "aggregate"',),
    ),
    "python -m benchmark perf": (
        "tests/test_perf.py::test_perf_tiny_prints_the_table_and_writes_json",
        ('"benchmark", "perf"', '"--out"'),
    ),
    "python -m benchmark perf --data": (
        "tests/test_perf.py::test_perf_data_tiny_measures_shards_decoding_dry_run_and_a_sharded_cache",
        ('"perf"', '"--data"'),
    ),
    "python -m benchmark perf --methods mmpareto,opm --out perf-methods.json": (
        "tests/test_perf.py::test_perf_methods_measures_the_named_balancers_against_joint",
        ('"perf"', '"--methods"', '"--out"'),
    ),
    "snakemake --profile cluster -n": (
        "tests/test_workflow.py::test_cluster_profile_is_found_from_the_repository_root_and_asks_for_gpus",
        ('"--profile"', '"cluster"', '"-n"'),
    ),
    "snakemake --profile cluster": (
        "tests/test_slurm.py::test_tiny_grid_runs_under_slurm_as_one_array_and_a_crashed_job_resumes_on_retry",
        ('"--profile"', "workflow/profiles/cluster"),
    ),
    "snakemake --profile cluster --slurm-status-command squeue --config 'set=[\"resources.train.gpus=0\"]'": (
        "tests/test_slurm.py::test_tiny_grid_runs_under_slurm_as_one_array_and_a_crashed_job_resumes_on_retry",
        ('"--profile"', '"--slurm-status-command"', '"squeue"', "gpus=0"),
    ),
    "sudo bash scripts/local-slurm.sh start /tmp/slurm-test": (
        "tests/test_slurm.py::slurm",
        ("scripts/local-slurm.sh", '"start"'),
    ),
    "pip install .": (
        "tests/test_package.py::test_an_installed_wheel_runs_check_and_the_dag_outside_the_checkout",
        ('"pip", "install"',),
    ),
    "mmbench check": (
        "tests/test_package.py::test_an_installed_wheel_runs_check_and_the_dag_outside_the_checkout",
        ("bin/mmbench", '"check"'),
    ),
    # starts a server: the test reads back the event files TensorBoard reads
    "tensorboard --logdir results/runs": (
        "tests/test_tools.py::test_write_events_reads_back_as_the_history",
        ("tensorboard",),
    ),
}

CHEAP_RULE = (
    "`python -m benchmark list|check|compare|summary ...`, `python -m benchmark prune` without --delete, "
    "`... --help`, `bash run.sh -n ...` (a dry run) or `bash run.sh --report FILE`"
)


# --- reading the docs -----------------------------------------------------------------------------------------------
FENCE = re.compile(r"^\s*```(\S*)\s*$")


def normalised(command: str) -> str:
    """A command in one spelling: its shell words (comments dropped), quoted only where needed."""
    return shlex.join(shlex.split(command, comments=True))


def bash_commands(path: Path) -> list[tuple[int, str]]:
    """(line, command) of every command in the ```bash blocks of a markdown file."""
    out, lang, pending, start = [], None, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if fence:
            lang = fence.group(1) if lang is None else None
            continue
        if lang != "bash":
            continue
        text = line.strip()
        if not pending:
            start = n
        text = f"{pending} {text}".strip() if pending else text
        if text.endswith("\\"):  # a line continuation
            pending = text[:-1].rstrip()
            continue
        pending = ""
        if shlex.split(text, comments=True):
            out.append((start, normalised(text)))
    return out


def doc_commands() -> list[tuple[str, str]]:
    """(where, command) of every command shown in README.md and docs/*.md."""
    return [(f"{p.relative_to(REPO)}:{n}", cmd) for p in DOCS for n, cmd in bash_commands(p)]


def is_cheap(command: str) -> bool:
    words = shlex.split(command)
    if words[-1] == "--help":
        return True
    if words[:3] == ["python", "-m", "benchmark"] and len(words) > 3:
        return words[3] in {"list", "check", "compare", "summary", "events"} or (
            words[3] == "prune" and "--delete" not in words
        )
    if words[:2] == ["bash", "run.sh"]:
        return "-n" in words or "--dry-run" in words or "--report" in words
    return False


def argv(command: str) -> list[str]:
    """How this file runs a cheap command: `python` is this interpreter; `bash run.sh ARGS` is what run.sh executes
    once its environment is there (`python -m benchmark run ARGS`, checked below), so no test installs anything."""
    words = shlex.split(command)
    if words[:2] == ["bash", "run.sh"]:
        return [sys.executable, "-m", "benchmark", "run", *words[2:]]
    if words[0] == "python":
        return [sys.executable, *words[1:]]
    raise AssertionError(f"no way to run {command!r} here")


COMMANDS = doc_commands()
CHEAP = sorted({cmd for _, cmd in COMMANDS if is_cheap(cmd)})
SNAKEMAKE_RUNS = {cmd for cmd in CHEAP if cmd.startswith("bash run.sh")}  # build the whole DAG: seconds each


# --- what the docs must be ------------------------------------------------------------------------------------------
def test_the_readme_is_short_starts_with_its_title_and_links_every_page():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): use docs/"
    assert lines[0].startswith("# "), "README.md starts with its title"
    assert {cmd for _, cmd in bash_commands(REPO / "README.md")} >= {"bash run.sh", "bash test.sh"}
    unlinked = [p.name for p in DOCS[1:] if f"(docs/{p.name}" not in text]
    assert not unlinked, f"README.md links no page {unlinked}: add them to its 'Where to go next'"


def test_every_command_in_the_docs_is_run_by_a_test():
    mapped = {normalised(cmd) for cmd in MAPPED}
    missing = [f"{where}: {cmd}" for where, cmd in COMMANDS if not is_cheap(cmd) and cmd not in mapped]
    assert not missing, (
        "commands shown in the docs that no test runs:\n  " + "\n  ".join(missing) + "\nRun each in a test and add it "
        "to MAPPED in tests/test_docs.py (the test, and the parts of the command its code contains), or show a cheap "
        f"command instead, which tests/test_docs.py runs itself: {CHEAP_RULE}."
    )


def test_every_mapped_command_is_still_in_the_docs():
    shown = {cmd for _, cmd in COMMANDS}
    stale = [cmd for cmd in MAPPED if normalised(cmd) not in shown]
    assert not stale, f"MAPPED lists commands no page shows any more (remove them): {stale}"


def _definitions(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Source of every function of a module (top level and nested) and of its module-level constants, by name."""
    text = path.read_text()
    tree = ast.parse(text)
    functions = {
        node.name: ast.get_source_segment(text, node) or ""
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
    }
    constants = {
        target.id: ast.get_source_segment(text, node) or ""
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return functions, constants


def _test_code(target: str) -> str:
    """The code of a test and of what of its module it uses: the functions it calls (and theirs: two levels) and the
    module-level constants they name."""
    file, _, name = target.partition("::")
    path = REPO / file
    assert path.is_file(), f"{target}: no file {file}"
    if not name:
        return path.read_text()
    functions, constants = _definitions(path)
    assert name in functions, f"{target}: {file} has no function {name}"
    seen, frontier = {name}, [name]
    for _ in range(2):
        called = {n for f in frontier for n in re.findall(r"\b(\w+)\(", functions[f])} & set(functions) - seen
        seen |= called
        frontier = sorted(called)
    code = "\n".join(functions[n] for n in sorted(seen))
    named = {n for n in re.findall(r"\b([A-Z][A-Z0-9_]*)\b", code) if n in constants}
    return "\n".join([code, *(constants[n] for n in sorted(named))])


@pytest.mark.parametrize("command", sorted(MAPPED))
def test_the_test_a_command_is_mapped_to_exists_and_runs_it(command):
    target, parts = MAPPED[command]
    code = _test_code(target)
    absent = [p for p in parts if p not in code]
    assert not absent, f"{target} does not contain {absent}, so it does not run `{command}` as the docs show it"


def test_run_sh_is_the_benchmark_run():
    """`bash run.sh ARGS` runs `python -m benchmark run ARGS` once its environment exists: the cheap commands below
    run that, and the mapped ones name tests that run it."""
    last = [line for line in (REPO / "run.sh").read_text().splitlines() if line.strip()][-1]
    assert last == 'exec python -m benchmark run "$@"'


def test_the_readmes_table_is_the_committed_leaderboards():
    """The one table the README shows is the default study's main table as committed, rows and footnotes alike."""
    readme = (REPO / "README.md").read_text().splitlines()
    board = "\n".join((REPO / "results" / "default" / "leaderboard.md").read_text().splitlines())
    rows = [line for line in readme if line.startswith("|")]
    notes = [line for line in readme if re.match(r"\[\d+\] ", line)]
    assert len(rows) > 3, "the README shows the default study's table"
    for part in (rows, notes):
        assert "\n".join(part) in board, "refresh the README's table from results/default/leaderboard.md"


# --- the cheap commands, run ----------------------------------------------------------------------------------------
IGNORED = {".git", ".venv", "data", ".snakemake", "__pycache__", ".pytest_cache", "build", ".whl", ".gl", "_bundle"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of the checkout with its committed results (no data/, weights, logs or Snakemake metadata): commands
    that write (Snakemake's metadata, a report) write there."""
    copy = tmp_path_factory.mktemp("docs") / "repo"

    def ignore(folder: str, names: list[str]) -> set[str]:
        logs = {"logs"} if Path(folder).name == "results" else set()
        return {n for n in names if n in IGNORED | logs or n.endswith((".egg-info", ".pt"))}

    shutil.copytree(REPO, copy, symlinks=True, ignore=ignore)
    return copy


@pytest.mark.parametrize(
    "command",
    [pytest.param(c, marks=pytest.mark.slow) if c in SNAKEMAKE_RUNS else c for c in CHEAP],
)
def test_a_cheap_command_of_the_docs_runs(command, workspace):
    res = subprocess.run(argv(command), cwd=workspace, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, f"`{command}` exited {res.returncode}:\n{(res.stdout + res.stderr)[-3000:]}"
    words = shlex.split(command)
    if "--report" in words:  # Snakemake's report shows the outputs the aggregate rule marks for it
        report = (workspace / words[words.index("--report") + 1]).read_text()
        for name in ("results/default/leaderboard.md", "results/default/report.html", "synthetic-av__small_cnn.png"):
            assert name in report, f"Snakemake's report does not show {name}"


# --- links ----------------------------------------------------------------------------------------------------------
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (letters, digits, _ and - kept), spaces -> -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    out, counts, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading and not fenced:
            base = slug(heading.group(1))
            n = counts.get(base, 0)
            counts[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str]]:
    out, fenced = [], False
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out += [(n, target) for target in LINK.findall(re.sub(r"`[^`]*`", "", line))]
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(path):
    broken = []
    for n, target in links(path):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(f"{path.name}:{n}: {target} (no {file})")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            broken.append(f"{path.name}:{n}: {target} (no heading #{anchor} in {dest.name})")
    assert not broken, "broken links:\n  " + "\n  ".join(broken)
