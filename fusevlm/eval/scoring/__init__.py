"""Benchmark scorers that follow the official (or reference) evaluation rules exactly.

>>> from fusevlm.eval.scoring import score, format_table
>>> result = score("textvqa", "TextVQA_0.5.1_val.json", "answers.json", rules="evalai")  # doctest: +SKIP
>>> print(format_table([result]))  # doctest: +SKIP

Each scorer takes ``(data, answers, rules="official", strict=False)`` and returns the dict described
in :mod:`fusevlm.eval.scoring.result`. Only VQAv2, TextVQA and VizWiz have a second rule set
(``"evalai"``); the others accept only ``"official"``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .gqa import score_gqa
from .mmbench import score_mmbench, score_mmbench_cn
from .mme import score_mme
from .pope import score_pope
from .questions import load_questions, write_answers
from .report import format_table
from .scienceqa import score_scienceqa
from .vqa import score_textvqa, score_vizwiz, score_vqav2

Scorer = Callable[..., dict[str, Any]]

SCORERS: dict[str, Scorer] = {
    "vqav2": score_vqav2,
    "textvqa": score_textvqa,
    "vizwiz": score_vizwiz,
    "gqa": score_gqa,
    "mmbench": score_mmbench,
    "mmbench_cn": score_mmbench_cn,
    "scienceqa": score_scienceqa,
    "pope": score_pope,
    "mme": score_mme,
}


def score(
    benchmark: str,
    data: str | Path,
    answers: str | Path,
    rules: str = "official",
    strict: bool = False,
) -> dict[str, Any]:
    """Score the answers file ``answers`` for ``benchmark`` against its official ``data`` file(s).

    ``strict=True`` raises :class:`ScoringError` when some questions have no answer (otherwise they
    are scored as wrong and reported through ``n_scored < n_total``).
    """
    try:
        scorer = SCORERS[benchmark]
    except KeyError:
        raise ScoringError(f"unknown benchmark {benchmark!r}; choose from {', '.join(SCORERS)}") from None
    return scorer(data, answers, rules=rules, strict=strict)


__all__ = [
    "SCORERS",
    "ScoringError",
    "format_table",
    "load_questions",
    "score",
    "write_answers",
]
