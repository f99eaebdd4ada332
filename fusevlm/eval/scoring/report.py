"""Rendering scorer results as a Markdown table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """One Markdown row per result: benchmark, metric, score (2 decimals), answered/total, unresolved.

    A result that did not cover all its questions is flagged in the ``answered`` column so a partial
    run cannot be mistaken for a full one.
    """
    lines = [
        "| Benchmark | Metric | Score | Answered / total | Unresolved |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for r in results:
        answered = f"{r['n_scored']} / {r['n_total']}"
        if r["n_scored"] < r["n_total"]:
            answered += " (partial)"
        lines.append(
            f"| {_cell(r['benchmark'])} | {_cell(r['metric'])} | {r['score']:.2f} | {answered} "
            f"| {len(r.get('unresolved', []))} |"
        )
    return "\n".join(lines) + "\n"
