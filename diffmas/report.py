"""Readable summaries of evaluation runs."""

from __future__ import annotations


def _fmt_seconds(s: float) -> str:
    return f"{s:.1f}s" if s < 120 else f"{s / 60:.1f}min"


def summary_table(summaries: list[dict]) -> str:
    """A Markdown table, one row per run: accuracy with its 95% interval, tokens and time."""
    header = [
        "method",
        "task",
        "n",
        "accuracy",
        "95% CI",
        "gen tokens",
        "perplexity",
        "latent steps",
        "passed text/latent",
        "s/problem",
        "total",
        "no answer",
        "cued (right)",
    ]
    rows = []
    for s in summaries:
        lo, hi = s["ci95"]
        rows.append(
            [
                s["method"],
                s["task"],
                str(s["n"]),
                f"{100 * s['accuracy']:.1f}%",
                f"{100 * lo:.1f}-{100 * hi:.1f}",
                f"{s['mean_generated_tokens']:.1f}",
                "-" if s.get("mean_perplexity") is None else f"{s['mean_perplexity']:.3f}",
                f"{s['mean_latent_steps']:.0f}",
                f"{s.get('mean_passed_text_tokens', 0):.0f} / {s.get('mean_passed_latent_vectors', 0):.0f}",
                f"{s['mean_seconds']:.2f}",
                _fmt_seconds(s["method_seconds"]),
                str(s["extraction_failures"]),
                f"{s.get('answers_cued', 0)} ({s.get('cued_correct', 0)})",
            ]
        )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


MAX_EXTRACTION_FAILURES = 0.05


def warnings(summary: dict) -> list[str]:
    """What a reader of a result should be told first: accuracy below guessing, too many outputs
    from which no answer could be read (the model's fault or the extractor's: look), or too many
    that gave one only once cued."""
    out, n = [], summary["n"]
    chance = summary.get("chance")
    name = f"{summary['method']} on {summary['task']}"
    if chance is not None and n and summary["accuracy"] < chance:
        out.append(f"{name}: accuracy {100 * summary['accuracy']:.1f}% is below chance ({100 * chance:.1f}%)")
    failures, answers = summary["extraction_failures"], summary.get("answers", n)  # of every sample's answers
    if answers and failures > MAX_EXTRACTION_FAILURES * answers:
        out.append(
            f"{name}: no answer could be read from {failures} of {answers} outputs "
            f"({100 * failures / answers:.0f}%, more than {100 * MAX_EXTRACTION_FAILURES:.0f}%); read their "
            "`output` in records.jsonl"
        )
    cued = summary.get("answers_cued", 0)  # of the n first answers
    if n and cued > MAX_EXTRACTION_FAILURES * n:
        out.append(
            f"{name}: {cued} of {n} answers ({100 * cued / n:.0f}%) named none until the answer cue "
            "was appended (records with answer_cued; --no-answer-cue leaves them unanswered)"
        )
    return out


def ratio_lines(summaries: list[dict], fast: str = "latent_mas", slow: str = "text_mas") -> list[str]:
    """Speed and token ratios of two methods measured in the same run."""
    by = {s["method"]: s for s in summaries}
    if fast not in by or slow not in by:
        return []
    a, b = by[fast], by[slow]
    speed = b["method_seconds"] / a["method_seconds"] if a["method_seconds"] else float("inf")
    saved = 1 - a["mean_generated_tokens"] / b["mean_generated_tokens"] if b["mean_generated_tokens"] else 0.0
    return [f"{fast} is {speed:.2f}x faster than {slow} and generates {100 * saved:.1f}% fewer tokens"]


def plot_accuracy(summaries: list[dict], path, title: str = "") -> None:
    """Accuracy (with its 95% interval) against generated tokens and against time, one point per
    run, written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, key, label in (
        (axes[0], "mean_generated_tokens", "generated tokens per problem"),
        (axes[1], "mean_seconds", "seconds per problem"),
    ):
        for s in summaries:  # a legend, not labels at the points: trained methods often coincide
            acc, (lo, hi) = 100 * s["accuracy"], s["ci95"]
            ax.errorbar(s[key], acc, yerr=[[acc - 100 * lo], [100 * hi - acc]], fmt="o", capsize=4, label=s["method"])
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%), 95% interval")
    axes[1].legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
