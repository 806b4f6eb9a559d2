"""``arena-report``: the starter notebook's exploration of train.csv as a command, with PNG plots and Markdown.

Class balance, response lengths by winner (the notebook's three box plots), token-length percentiles and the share
of rows each max length would truncate, the multi-turn share and null turns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from arena.cli.app import run_app, setup_logging
from arena.errors import cli_errors
from arena.io import atomic_write_text

app = typer.Typer(add_completion=False, help=__doc__, pretty_exceptions_enable=False)
MAX_LENGTHS = (256, 512, 768, 1024, 1536, 2048)
REPORT_FILES = ("data.md", "data.json", "data.png")


def full_token_lengths(records, tokenizer) -> np.ndarray:
    """Tokens of the whole row (prompt + A + B, all turns, no truncation) with 4 special tokens."""
    texts = [" ".join((*r.prompt, *r.response_a, *r.response_b)) for r in records]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return np.array([len(x) + 4 for x in ids])


def summarize(records, tokenizer=None) -> dict[str, Any]:
    from arena.data import CLASS_NAMES

    labels = [r.label for r in records if r.label is not None]
    len_a = np.array([sum(len(t) for t in r.response_a) for r in records])
    len_b = np.array([sum(len(t) for t in r.response_b) for r in records])
    out: dict[str, Any] = {"rows": len(records), "labelled": bool(labels)}
    if labels:  # an unlabelled (test) file has no classes: no counts, rather than counts of 0
        counts = np.bincount(labels, minlength=3)
        out["class_counts"] = {CLASS_NAMES[i]: int(counts[i]) for i in range(3)}
        out["class_share"] = {CLASS_NAMES[i]: float(counts[i] / max(counts.sum(), 1)) for i in range(3)}
    out |= {
        "multi_turn_share": float(np.mean([len(r.prompt) > 1 for r in records])) if records else 0.0,
        "rows_with_null_or_empty_turn": int(sum(any(t == "" for t in (*r.response_a, *r.response_b, *r.prompt))
                                                for r in records)),
        "identical_responses": int(sum(r.response_a == r.response_b for r in records)),
        "response_chars_median": {"a": float(np.median(len_a)) if records else 0.0,
                                  "b": float(np.median(len_b)) if records else 0.0},
    }
    if labels:
        lab = np.array([r.label for r in records])
        longer_a = len_a > len_b
        out["longer_response_wins"] = float(np.mean(np.where(longer_a, lab == 0, lab == 1)[lab != 2]))
        out["median_length_difference_by_winner"] = {
            CLASS_NAMES[c]: float(np.median((len_a - len_b)[lab == c])) if np.any(lab == c) else 0.0
            for c in range(3)}
    if tokenizer is not None and records:
        tokens = full_token_lengths(records, tokenizer)
        out["token_length_percentiles"] = {str(p): float(np.percentile(tokens, p)) for p in (10, 25, 50, 75, 90, 99)}
        out["truncated_share_by_max_length"] = {str(m): float(np.mean(tokens > m)) for m in MAX_LENGTHS}
        out["_tokens"] = tokens
    return out


def plot(records, summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from arena.data import CLASS_NAMES

    fig, axes = plt.subplots(1, 3 + ("_tokens" in summary), figsize=(5 * (3 + ("_tokens" in summary)), 4.2))
    counts = [summary["class_counts"][c] for c in CLASS_NAMES]
    axes[0].bar(["a wins", "b wins", "tie"], counts, color=["#3b75af", "#e1812c", "#3a923a"])
    axes[0].set_title("class balance")
    lab = np.array([r.label for r in records])
    len_a = np.array([sum(len(t) for t in r.response_a) for r in records])
    len_b = np.array([sum(len(t) for t in r.response_b) for r in records])
    for ax, values, name in ((axes[1], len_a, "response A"), (axes[2], len_b, "response B")):
        ax.boxplot([values[lab == c] for c in range(3)], showfliers=False)
        ax.set_xticks([1, 2, 3], ["a wins", "b wins", "tie"])
        ax.set_title(f"{name} length (characters) by winner")
    if "_tokens" in summary:
        ax = axes[3]
        ax.hist(np.minimum(summary["_tokens"], 4096), bins=50, color="#888888")
        for m in (512, 1024, 2048):
            ax.axvline(m, color="#d62728", lw=0.8)
        ax.set_title("tokens per row (whole text; red: 512/1024/2048)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def markdown(summary: dict[str, Any], source: str, plot_file: str | None = None) -> str:
    """The report as Markdown; ``plot_file`` is linked only when this run wrote it."""
    s = summary
    if s.get("class_counts"):
        shares = s["class_share"]
        classes = "- classes: " + ", ".join(f"{k} {v} ({shares[k]:.1%})" for k, v in s["class_counts"].items())
    else:
        classes = "- labels: none (an unlabelled file, e.g. test.csv): no class balance or lengths by winner"
    lines = [f"# Data report: {source}", "", f"- rows: {s['rows']}", classes,
             f"- multi-turn rows: {s['multi_turn_share']:.1%}",
             f"- rows with a null or empty turn: {s['rows_with_null_or_empty_turn']}",
             f"- identical responses: {s['identical_responses']}"]
    if "longer_response_wins" in s:
        lines.append(f"- the longer response wins {s['longer_response_wins']:.1%} of non-tie battles")
    if "token_length_percentiles" in s:
        lines += ["", "| percentile | tokens |", "|---|---|"]
        lines += [f"| p{k} | {v:.0f} |" for k, v in s["token_length_percentiles"].items()]
        lines += ["", "| max length | rows truncated |", "|---|---|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in s["truncated_share_by_max_length"].items()]
    lines += ["", f"![data]({plot_file})", ""] if plot_file else [""]
    return "\n".join(lines)


@app.command()
@cli_errors
def report(
    csv_path: Annotated[Path, typer.Argument(help="train.csv (or test.csv: no class plots)")],
    out: Annotated[Path, typer.Option(help="Folder for data.md, data.json, data.png")] = Path("runs/report"),
    tokenizer: Annotated[str | None, typer.Option(help="Tokenizer folder for token-length statistics")] = None,
) -> None:
    """Summarise an arena CSV: classes, lengths by winner, truncation by max length, turns."""
    setup_logging()
    from arena.cli.options import existing_file, existing_folder
    from arena.cli.safety import check_report_out, remove_stale
    from arena.data import check_layout, has_labels, read_records
    from arena.models.modeling import is_local, load_tokenizer

    existing_file("CSV_PATH", csv_path, "the train or test file to describe (e.g. train.csv)")
    check_layout(csv_path, labelled=False)
    if tokenizer is not None and is_local(tokenizer):
        existing_folder("--tokenizer", tokenizer, "the folder that holds the tokenizer files")
    earlier = check_report_out(out, names=REPORT_FILES, owner="data.json", kind="arena-report",
                               inputs={"input file": csv_path, "tokenizer": tokenizer})
    labelled = has_labels(csv_path)
    records = read_records(csv_path, labelled=labelled)
    tok = load_tokenizer(tokenizer, tokenizer_option="--tokenizer") if tokenizer else None
    summary = summarize(records, tok)
    out.mkdir(parents=True, exist_ok=True)
    written = ["data.json", "data.md"]
    if labelled and records:
        plot(records, summary, out / "data.png")
        written.append("data.png")
    public = {"kind": "arena-report", **{k: v for k, v in summary.items() if not k.startswith("_")}}
    text = markdown(public, str(csv_path), "data.png" if "data.png" in written else None)
    atomic_write_text(out / "data.json", json.dumps(public, indent=2))
    atomic_write_text(out / "data.md", text)
    remove_stale(out, earlier, written)  # an earlier run's plot must not pass for this file's
    typer.echo(text)
    typer.echo(json.dumps({"rows": public["rows"], "labelled": labelled, "report": str(out / "data.md")}))


def main() -> None:
    run_app(app)
