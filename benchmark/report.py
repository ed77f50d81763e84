"""The static HTML report: every table of the leaderboard and every figure (``benchmark.plots``), built from the
aggregated tables and the metrics records alone."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from benchmark.grid import dataset_modalities
from benchmark.leaderboard import (
    AUDIT_CAPTION,
    CD_FIGURE,
    COLUMN_GUIDE,
    Table,
    agreement_table,
    as_table,
    audit_table,
    diagnostics_table,
    friedman,
    friedman_text,
    main_table,
    numeric_columns,
    rank_table,
    robustness_caption,
    robustness_table,
    split_marks,
    tuning_statement,
)
from benchmark.plots import critical_difference_diagram, dataset_plots, slug

# every table alike: numbers right-aligned on one line (tabular figures, so digits line up), names left-aligned;
# headers may wrap; the marks after a number sit in a box of their own width, so marked and unmarked numbers line up;
# tables use the window's width (text stays narrower to read), and a wider one scrolls instead of squeezing its cells
STYLE = """body{font-family:system-ui,sans-serif;margin:2em 1em;color:#222}
p,ul,ol,h1,h2,h3,figure,details{max-width:1400px}
details.guide{margin:.5em 0 1em}details.guide summary{cursor:pointer;color:#335}
.scroll{overflow-x:auto;margin:1em 0 .5em}
table{border-collapse:collapse;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 5px;vertical-align:bottom}
th{background:#f3f3f3;font-weight:600}
td{white-space:nowrap}
tbody tr:nth-child(even){background:#fafafa}
.num{text-align:right;font-variant-numeric:tabular-nums}.text{text-align:left}
.mark{display:inline-block;min-width:1.4em;text-align:left}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
figure{margin:1em 0}figcaption{font-size:13px;color:#555}.notes,.legend{font-size:13px;color:#444}"""


#: where a long header word may break (a soft hyphen): the widest header would otherwise set its column's width
HEADER_BREAKS = {"hyperparameters": "hyper\u00adparameters"}


def _header_html(name: str) -> str:
    text = html.escape(name)
    for word, broken in HEADER_BREAKS.items():
        text = text.replace(word, broken)
    return text


def _text(value) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else str(value)


def _cell_html(text: str, bold: bool, marked: bool) -> str:
    """A cell's HTML: bold covers the value, not its marks; in a column with marks every cell has a mark box."""
    value, marks = split_marks(text)
    shown = f"<strong>{html.escape(value)}</strong>" if bold else html.escape(value)
    return shown + (f"<span class='mark'>{html.escape(marks.strip())}</span>" if marked else html.escape(marks))


def table_html(table: Table | pd.DataFrame, css_class: str) -> str:
    """A table with a class per cell (num: right-aligned, never wrapped; text: left-aligned) and its bold cells."""
    t = as_table(table)
    numeric = set(numeric_columns(t.frame))
    kinds = ["num" if c in numeric else "text" for c in t.frame.columns]
    marked = {c for c in numeric if any(split_marks(_text(v))[1] for v in t.frame[c])}
    head = "".join(f"<th class='{k}'>{_header_html(str(c))}</th>" for c, k in zip(t.frame.columns, kinds))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='{k}'>{_cell_html(_text(v), (i, c) in t.bold, c in marked)}</td>"
            for c, k, v in zip(t.frame.columns, kinds, row)
        )
        + "</tr>"
        for i, row in enumerate(t.frame.itertuples(index=False))
    )
    return (
        f'<div class="scroll"><table class="dataframe {css_class}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def _notes_html(table: Table) -> str:
    """The legend of a table's marks and its numbered footnotes (the [i] in its cells)."""
    out = f"<p class='legend'>{html.escape(table.legend)}</p>" if table.legend else ""
    if table.notes:
        out += "<ol class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in table.notes) + "</ol>"
    return out


def _inline_markdown(text: str) -> str:
    """A Markdown sentence as HTML: **bold** and `code` spans, everything else escaped."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


def write_report(
    cfg: dict, summary: pd.DataFrame, runs: pd.DataFrame, records: dict[str, dict], agree: pd.DataFrame, out_dir: Path
) -> Path:
    """``out_dir/report.html`` with every table and figure (figures as files under ``out_dir/plots``)."""
    plots = out_dir / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for stale in plots.glob("*.png"):  # the report shows exactly the current grid's figures
        stale.unlink()
    board = cfg.get("leaderboard", {})
    reference, alpha = board.get("reference", "joint"), board.get("alpha", 0.05)
    commits = sorted({r["provenance"]["git_commit"] for r in records.values()})
    body = [
        "<h1>Multimodal balancing benchmark: leaderboard</h1>",
        f"<p>{len(records)} finished runs; code {html.escape(', '.join(commits) or 'n/a')}. Test metrics of each run's "
        "best-validation checkpoint, mean ± std over seeds × folds, with a 95% bootstrap interval over test clips; "
        f"* = differs from {html.escape(reference)} at Holm-adjusted p &lt; {alpha:g}. Rebuilt from the metrics files "
        "by <code>python -m benchmark aggregate</code>.</p>",
        f"<p>{_inline_markdown(tuning_statement(summary))}</p>",
        # folded: the tables come first, the guide is a click away
        "<details class='guide'><summary>What each column means</summary><ul>"
        + "".join(f"<li><b>{html.escape(n)}</b>: {html.escape(t)}</li>" for n, t in COLUMN_GUIDE)
        + "</ul></details>",
    ]
    for (dataset, backbone), table in summary.groupby(["dataset", "backbone"], sort=False):
        modalities = dataset_modalities(cfg, dataset)
        body.append(
            f"<h2 id='{html.escape(slug(dataset, backbone))}'>{html.escape(dataset)} · {html.escape(backbone)}</h2>"
        )
        main = main_table(table, modalities, reference, runs, alpha)
        body += [table_html(main, "leaderboard"), _notes_html(main)]
        diag = diagnostics_table(table, modalities)
        if not diag.empty:
            body += ["<h3>Diagnostics</h3>", table_html(diag, "diagnostics")]
        robust = robustness_table(table, modalities)
        if not robust.empty:
            body += [
                f"<h3>Missing-modality robustness</h3><p class='notes'>{html.escape(robustness_caption(table))}</p>",
                table_html(robust, "robustness"),
            ]
        audit = audit_table(table)
        if not audit.empty:
            body += [
                "<h3>What test-set selection would have claimed (optimistic)</h3>"
                f"<p class='notes'>{html.escape(AUDIT_CAPTION)}</p>",
                table_html(audit, "audit"),
            ]
        part = agree[(agree["dataset"] == dataset) & (agree["backbone"] == backbone)] if len(agree) else agree
        if len(part):
            body += [
                "<h3>Agreement with the unimodal models</h3><p class='notes'>share of test samples · multimodal "
                "accuracy (%)</p>",
                table_html(agreement_table(part, modalities, table), "agreement"),
            ]
        body.append("<h3>Plots</h3>")
        for caption, path in dataset_plots(cfg, table, runs, records, dataset, backbone, plots):
            rel = path.relative_to(out_dir).as_posix()
            body.append(
                f"<figure><img src='{html.escape(rel)}' "
                f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    ranks = rank_table(summary)
    if not ranks.frame.empty:
        body += ["<h2>Mean rank across datasets</h2>", table_html(ranks, "ranks"), _notes_html(ranks)]
    result = friedman(summary, alpha)
    body += [
        "<h2 id='friedman'>Friedman test and critical-difference diagram</h2>",
        f"<p class='friedman'>{html.escape(friedman_text(result))}</p>",
    ]
    if result["applicable"]:
        path = critical_difference_diagram(result, plots / CD_FIGURE)
        caption = f"critical-difference diagram (Nemenyi), Friedman p = {result['p']:.4g}"
        body.append(
            f"<figure><img src='{html.escape(path.relative_to(out_dir).as_posix())}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>Leaderboard</title>"
        f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>\n"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path
