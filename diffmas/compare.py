"""``diffmas compare``: several evaluation runs side by side, as Markdown, CSV, plots and HTML.

A run is a directory written by ``diffmas eval`` (its summary.json), a summary.json holding a list
of summaries (``diffmas demo`` writes one), or a directory whose subdirectories are runs. The HTML
report is self-contained: the plots are embedded, so the file can be mailed or archived alone.

A run still in progress (``records.jsonl`` and ``eval_config.json``, no summary yet) is summarised
from the records it has and labelled as partial, so a long evaluation can be compared as it goes.

Runs of one task with per-example records (``records.jsonl`` beside the summary) are also compared
in pairs on the problems both answered: how many each got right that the other did not, and the
exact McNemar p-value of that difference. Two methods on the same problems are far better told
apart this way than by their overlapping intervals.
"""

from __future__ import annotations

import base64
import csv
import html
import itertools
import json
import math
from pathlib import Path

from diffmas.errors import DiffMASError
from diffmas.records import RECORDS, SETTINGS, SUMMARY, read_records, summarise
from diffmas.report import plot_accuracy

COLUMNS = [
    "run",
    "method",
    "model",
    "task",
    "n",
    "accuracy",
    "ci95_low",
    "ci95_high",
    "stability",
    "agreement",
    "generated_tokens",
    "perplexity",
    "latent_steps",
    "prompt_tokens",
    "passed_text_tokens",
    "passed_latent_vectors",
    "s_per_problem",
    "total_seconds",
    "peak_memory_mb",
    "no_answer",
    "answers_cued",
]


def _summaries_in(path: Path) -> list[dict]:
    file = path / SUMMARY if path.is_dir() else path
    if file.is_file():
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise DiffMASError(
                f"{file} is not valid JSON ({exc.msg}); was the run interrupted while writing it?"
            ) from None
        items = data if isinstance(data, list) else [data]
        if not all(isinstance(s, dict) and "accuracy" in s and "method" in s for s in items):
            raise DiffMASError(f"{file} is not a summary written by `diffmas eval` or `diffmas demo`")
        label = path.name if path.is_dir() else path.parent.name
        records = file.parent / RECORDS if len(items) == 1 and (file.parent / RECORDS).is_file() else None
        return [{**s, "_run": label if len(items) == 1 else s["method"], "_records": records} for s in items]
    if path.is_dir() and (path / RECORDS).is_file() and (path / SETTINGS).is_file():
        return [_partial(path)]
    if path.is_dir():
        found = [
            s
            for sub in sorted(p for p in path.iterdir() if p.is_dir())
            for s in _summaries_in(sub)
            if (sub / SUMMARY).is_file() or (sub / RECORDS).is_file() or any(sub.glob(f"*/{SUMMARY}"))
        ]
        if found:
            return found
    raise DiffMASError(f"no {SUMMARY} in {path}: pass directories written by `diffmas eval --out DIR`")


def _partial(path: Path) -> dict:
    """The summary of an unfinished run, from its records so far."""
    try:
        config = json.loads((path / SETTINGS).read_text())
    except json.JSONDecodeError as exc:
        raise DiffMASError(f"{path / SETTINGS} is not valid JSON ({exc.msg})") from None
    records = read_records(path / RECORDS)
    if not records:
        raise DiffMASError(f"{path} has no records yet: nothing to compare")
    summary = summarise(records, config, {"split": config.get("split"), "partial": True})
    limit = config.get("limit")
    label = f"{path.name} (partial: {summary['n']}" + (f" of {limit})" if limit else ")")
    return {**summary, "_run": label, "_records": path / RECORDS}


def load_runs(paths: list[str | Path]) -> list[dict]:
    """Every summary found under ``paths``, labelled by run (made unique when names repeat)."""
    if not paths:
        raise DiffMASError("name at least one run directory to compare")
    summaries = []
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise DiffMASError(f"{path} does not exist")
        summaries.extend(_summaries_in(path))
    seen: dict[str, int] = {}
    for s in summaries:
        seen[s["_run"]] = seen.get(s["_run"], 0) + 1
        if seen[s["_run"]] > 1:
            s["_run"] = f"{s['_run']} ({seen[s['_run']]})"
    return summaries


def rows_of(summaries: list[dict]) -> list[dict]:
    """One flat row per run, the columns of :data:`COLUMNS`."""
    rows = []
    for s in summaries:
        lo, hi = s.get("ci95", [None, None])
        stab = s.get("stability") or {}
        rows.append(
            {
                "run": s["_run"],
                "method": s["method"],
                "model": s.get("model") or (s.get("config") or {}).get("model"),
                "task": s.get("task"),
                "n": s.get("n"),
                "accuracy": s["accuracy"],
                "ci95_low": lo,
                "ci95_high": hi,
                "stability": (
                    f"{100 * stab['mean']:.1f} +- {100 * stab['std']:.1f} (k={stab['samples']})" if stab else ""
                ),
                "agreement": stab.get("agreement", ""),
                "generated_tokens": s.get("mean_generated_tokens"),
                "perplexity": s.get("mean_perplexity"),  # runs of versions before it was measured have none
                "latent_steps": s.get("mean_latent_steps"),
                "prompt_tokens": s.get("mean_prompt_tokens"),
                "passed_text_tokens": s.get("mean_passed_text_tokens"),
                "passed_latent_vectors": s.get("mean_passed_latent_vectors"),
                "s_per_problem": s.get("mean_seconds"),
                "total_seconds": s.get("method_seconds"),
                "peak_memory_mb": s.get("peak_memory_mb"),
                "no_answer": s.get("extraction_failures"),
                "answers_cued": s.get("answers_cued", 0),  # runs of versions before the answer cue had none
            }
        )
    return rows


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: how likely a split of the discordant problems at least this
    uneven is if both methods are equally good (a binomial test with p = 1/2)."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def _correct_by_id(records_path: Path) -> dict[str, bool]:
    """Correctness per problem id of a run's first sample (what its accuracy counts)."""
    return {
        r["id"]: bool(r["correct"])
        for r in read_records(records_path)
        if r.get("sample", 0) == 0 and "id" in r and "correct" in r
    }


def paired_rows(summaries: list[dict]) -> list[dict]:
    """Every pair of runs of one task that both have records, compared on their shared problems."""
    correct = {id(s): _correct_by_id(s["_records"]) for s in summaries if s.get("_records")}
    rows = []
    for a, b in itertools.combinations([s for s in summaries if id(s) in correct], 2):
        ca, cb = correct[id(a)], correct[id(b)]
        shared = ca.keys() & cb.keys()
        if a.get("task") != b.get("task") or not shared:
            continue
        only_a = sum(ca[i] and not cb[i] for i in shared)
        only_b = sum(cb[i] and not ca[i] for i in shared)
        rows.append(
            {
                "a": a["_run"],
                "b": b["_run"],
                "shared": len(shared),
                "both": sum(ca[i] and cb[i] for i in shared),
                "only_a": only_a,
                "only_b": only_b,
                "difference": (only_a - only_b) / len(shared),
                "p_value": mcnemar_p(only_a, only_b),
            }
        )
    return rows


PAIRED_HEADER = [
    "A",
    "B",
    "shared problems",
    "both right",
    "only A right",
    "only B right",
    "A - B",
    "p (exact McNemar)",
]


def _paired_cells(row: dict) -> list[str]:
    return [
        row["a"],
        row["b"],
        str(row["shared"]),
        str(row["both"]),
        str(row["only_a"]),
        str(row["only_b"]),
        f"{100 * row['difference']:+.1f} pts",
        f"{row['p_value']:.3g}",
    ]


def _cells(row: dict) -> list[str]:
    def num(v, fmt):
        return "-" if v is None or v == "" else format(v, fmt)

    ci = "-" if row["ci95_low"] is None else f"{100 * row['ci95_low']:.1f}-{100 * row['ci95_high']:.1f}"
    agreement = "-" if row["agreement"] == "" else f"{100 * row['agreement']:.0f}%"
    return [
        row["run"],
        row["method"],
        str(row["model"] or "-"),
        str(row["task"]),
        str(row["n"]),
        f"{100 * row['accuracy']:.1f}%",
        ci,
        row["stability"] or "-",
        agreement,
        num(row["generated_tokens"], ".1f"),
        num(row["perplexity"], ".3f"),
        num(row["latent_steps"], ".0f"),
        num(row["s_per_problem"], ".2f"),
        num(row["total_seconds"], ".0f"),
        str(row["no_answer"]),
        str(row["answers_cued"]),
    ]


HEADER = [
    "run",
    "method",
    "model",
    "task",
    "n",
    "accuracy",
    "95% CI",
    "stability (acc. mean +- sd)",
    "agreement",
    "gen tokens",
    "perplexity",
    "latent steps",
    "s/problem",
    "total s",
    "no answer",
    "cued",
]


def markdown_table(rows: list[dict], header: list[str] = HEADER, cells=_cells) -> str:
    body = [cells(r) for r in rows]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(items: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(items, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, body)])


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _html_table(table_id: str, header: list[str], cells: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in cells)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def write_html(rows: list[dict], plot: Path, path: Path, title: str, paired: list[dict] | None = None) -> None:
    table = _html_table("comparison", HEADER, [_cells(r) for r in rows])
    pairs = (
        ""
        if not paired
        else (
            "<h2>Pairs of runs on the problems both answered</h2>\n"
            "<p>Problems only one of the two got right, and how likely so uneven a split is if both were equally "
            "good (exact McNemar test).</p>\n"
            + _html_table("paired", PAIRED_HEADER, [_paired_cells(r) for r in paired])
        )
    )
    image = base64.b64encode(plot.read_bytes()).decode("ascii")
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 10px; text-align: right; }}
th {{ background: #f3f3f3; }} td:nth-child(-n+3) {{ text-align: left; }}
img {{ max-width: 100%; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Accuracy with its 95% Wilson interval; tokens and seconds are means per problem.</p>
{table}
{pairs}
<h2>Accuracy against generated tokens and time</h2>
<img id="accuracy-plot" alt="accuracy against generated tokens and against seconds per problem"
 src="data:image/png;base64,{image}">
</body></html>
""")


def default_title(summaries: list[dict]) -> str:
    """What the runs are: their task(s) and model(s), e.g. "gsm8k on qwen2.5-coder-0.5b-instruct: 5 runs"."""

    def names(key: str) -> str:
        found = dict.fromkeys(str(s.get(key) or (s.get("config") or {}).get(key) or "?") for s in summaries)
        return ", ".join(found)

    return f"{names('task')} on {names('model')}: {len(summaries)} runs"


def compare(paths: list[str | Path], out: str | Path, title: str | None = None) -> dict:
    """Write comparison.md (with the paired table where runs have records), comparison.csv,
    paired.csv, accuracy.png and report.html to ``out``. ``title``: of the plot and the report
    (default: the runs' tasks and models)."""
    summaries = load_runs(paths)
    title = title or default_title(summaries)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DiffMASError(f"cannot create output directory {out}: {exc.strerror}") from None
    rows = rows_of(summaries)
    paired = paired_rows(summaries)
    table = markdown_table(rows)
    if paired:
        table += "\n\nPairs on the problems both answered (exact McNemar test):\n\n" + markdown_table(
            paired, PAIRED_HEADER, _paired_cells
        )
    (out / "comparison.md").write_text(table + "\n")
    write_csv(rows, out / "comparison.csv")
    names = ["comparison.md", "comparison.csv", "accuracy.png", "report.html"]
    if paired:
        with open(out / "paired.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(paired[0]))
            writer.writeheader()
            writer.writerows(paired)
        names.insert(2, "paired.csv")
    plot = out / "accuracy.png"
    plot_accuracy([{**s, "method": s["_run"]} for s in summaries], plot, title=title)
    write_html(rows, plot, out / "report.html", title, paired)
    return {"table": table, "rows": rows, "paired": paired, "files": [str(out / n) for n in names]}
