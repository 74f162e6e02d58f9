"""The evaluation report: a score table (Markdown for the KFP UI and terminals, HTML for browsers) and
a bar chart. Per task: our score, the untrained model's, the gray-image control's, chance, and the
paper's 8B/4B numbers where Table 1 has the benchmark."""
from __future__ import annotations

import html

from ovpipe.evaluate.paper import paper_scores

COLUMNS = ("task", "metric", "score", "before", "blind", "chance", "paper 8B", "paper 4B")


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def rows(scores: dict[str, dict]) -> list[list[str]]:
    out = []
    for task, s in sorted(scores.items()):
        paper = paper_scores(task) or {}
        out.append([task, s.get("metric", ""), *(_fmt(s.get(k)) for k in ("score", "before", "blind", "chance")),
                    _fmt(paper.get("8B")), _fmt(paper.get("4B"))])
    return out


def markdown(scores: dict[str, dict], title: str) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(scores)]
    lines += ["", "score: the evaluated model; before: the same model untrained; blind: the evaluated model "
              "with every image replaced by flat gray (should stay near chance)."]
    return "\n".join(lines) + "\n"


def text_table(scores: dict[str, dict]) -> str:
    table = [list(COLUMNS)] + rows(scores)
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in table)


def html_page(scores: dict[str, dict], title: str, chart: str | None = None) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows(scores))
    img = f'<p><img src="{html.escape(chart)}" alt="scores"></p>' if chart else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif}td,th{padding:4px 10px;border-bottom:1px solid #ddd;"
            "text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{body}</table>{img}</body></html>")


def bar_chart(scores: dict[str, dict], path: str, title: str) -> None:
    import numpy as np

    from ovpipe.plots import figure

    tasks = sorted(scores)
    x = np.arange(len(tasks))
    series = (("before", "untrained", "#bbbbbb"), ("score", "trained", "#3b7dd8"), ("blind", "gray images", "#e39b3b"))
    with figure(path, (max(6.0, 0.55 * len(tasks) + 2), 4), dpi=110) as (_, ax):
        for i, (key, label, color) in enumerate(series):
            vals = [scores[t].get(key) or 0.0 for t in tasks]
            ax.bar(x + (i - 1) * 0.27, vals, 0.27, label=label, color=color)
        for j, t in enumerate(tasks):
            if scores[t].get("chance") is not None:
                ax.hlines(scores[t]["chance"], j - 0.42, j + 0.42, colors="black", linestyles="dashed", lw=1)
        ax.set_xticks(x, tasks, rotation=60, ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("score (dashed: chance)")
        ax.set_title(title)
        ax.legend(fontsize=8)
