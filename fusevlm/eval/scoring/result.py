"""Matching an answers file to a benchmark's questions, and the common result shape.

Every scorer returns the dict built by :func:`build_result`::

    {"benchmark": str, "metric": str, "score": float, "n_scored": int, "n_total": int,
     "splits": {...}, "unresolved": [...], "missing": [...], "n_missing": int, "rules": str}

``n_scored`` is the number of questions that have an answer; a question without an answer is scored
as wrong (it stays in every denominator), so a partial answers file can never inflate a score.
``missing`` lists the first :data:`MAX_LISTED` unanswered question ids.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import Record

MAX_LISTED = 50

# Field pairs of the answers formats the scorers know, to name the format a foreign file looks like.
KNOWN_FORMATS: dict[tuple[str, str], str] = {
    ("questionId", "prediction"): "a GQA answers file",
    ("image", "answer"): "a VizWiz answers file",
    ("question_id", "answer"): "a VQAv2/TextVQA answers file",
    ("question_id", "text"): "a LLaVA-style answers file (ScienceQA/POPE/MMBench/MME)",
    ("question_id", "prediction"): "a prediction file",
}


def guess_format(entry: Any) -> str | None:
    """Name the known answers format whose two fields ``entry`` carries, if any."""
    if not isinstance(entry, dict):
        return None
    for (id_field, text_field), name in KNOWN_FORMATS.items():
        if id_field in entry and text_field in entry:
            return name
    return None


def as_int_id(value: Any) -> Any:
    """Question ids that are integers in the official files: accept ``12`` and ``"12"`` alike."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def as_str_id(value: Any) -> Any:
    """Question ids that are strings in the official files: accept ``"12"`` and ``12`` alike."""
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return str(int(value))
    return value


def collect_answers(
    path: Path,
    records: Sequence[Record],
    *,
    benchmark: str,
    id_field: str,
    text_field: str,
    known_ids: Collection[Hashable],
    normalize_id: Callable[[Any], Any] = lambda v: v,
    ignorable_ids: Collection[Hashable] = (),
) -> dict[Any, str]:
    """Map question id -> answer text, refusing files that do not belong to ``benchmark``.

    Refused (with :class:`ScoringError`): entries that are not objects or lack ``id_field`` /
    ``text_field`` (the message says which known format the file looks like), answers that are not
    strings, duplicate ids, and ids absent from ``known_ids``. Ids in ``ignorable_ids`` are accepted
    and dropped (for example ScienceQA test questions without an image).
    """
    if not records:
        raise ScoringError(f"{path}: the answers file holds no answers")
    answers: dict[Any, str] = {}
    first_line: dict[Any, int] = {}
    unknown: list[tuple[int, Any]] = []
    expected = f"'{id_field}' and '{text_field}'"
    for rec in records:
        entry = rec.value
        if not isinstance(entry, dict):
            raise ScoringError(
                f"{path}: line {rec.line}: answer entry is a {type(entry).__name__}, expected a JSON "
                f"object with {expected}"
            )
        for field in (id_field, text_field):
            if field not in entry:
                looks = guess_format(entry)
                hint = f"; it looks like {looks}" if looks else ""
                have = ", ".join(sorted(map(str, entry))[:8])
                raise ScoringError(
                    f"{path}: line {rec.line}: answer entry has no field '{field}' (fields: {have}); "
                    f"a {benchmark} answers file needs {expected}{hint}"
                )
        text = entry[text_field]
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise ScoringError(
                f"{path}: line {rec.line}: field '{text_field}' must be a string, got {type(text).__name__}"
            )
        qid = normalize_id(entry[id_field])
        if not isinstance(qid, Hashable) or isinstance(qid, (list, dict)):
            raise ScoringError(f"{path}: line {rec.line}: field '{id_field}' is not a usable id: {qid!r}")
        if qid in first_line:
            raise ScoringError(
                f"{path}: line {rec.line}: duplicate answer for {id_field}={qid!r} "
                f"(first given on line {first_line[qid]})"
            )
        first_line[qid] = rec.line
        if qid not in known_ids:
            if qid not in ignorable_ids:
                unknown.append((rec.line, qid))
            continue
        answers[qid] = text
    if unknown:
        listed = ", ".join(f"{qid!r} (line {line})" for line, qid in unknown[:5])
        if not answers:
            raise ScoringError(
                f"{path}: none of the {len(unknown)} answered {id_field}s is a {benchmark} question of the "
                f"given data file (e.g. {listed}) - this answers file belongs to another benchmark or split"
            )
        raise ScoringError(
            f"{path}: {len(unknown)} answered {id_field}s are not questions of the given {benchmark} data "
            f"file: {listed}{' ...' if len(unknown) > 5 else ''}"
        )
    return answers


def find_missing(
    path: Path, question_ids: Iterable[Hashable], answered: Collection[Hashable], strict: bool
) -> list[Any]:
    """Return the unanswered question ids in data order; with ``strict`` raise if there are any."""
    ids = list(question_ids)
    missing = [qid for qid in ids if qid not in answered]
    if missing and strict:
        listed = ", ".join(repr(q) for q in missing[:5])
        raise ScoringError(
            f"{path}: {len(missing)} of {len(ids)} questions have no answer (strict mode), e.g. {listed}"
        )
    return missing


def pct(numerator: float, denominator: int) -> float:
    """``100 * numerator / denominator`` with an empty denominator giving 0.0."""
    return 100.0 * numerator / denominator if denominator else 0.0


def build_result(
    *,
    benchmark: str,
    metric: str,
    score: float,
    n_scored: int,
    n_total: int,
    splits: dict[str, Any],
    unresolved: list[dict[str, Any]],
    missing: Sequence[Any],
    rules: str = "official",
    **extra: Any,
) -> dict[str, Any]:
    """Assemble the result dict shared by all scorers (see the module docstring)."""
    result: dict[str, Any] = {
        "benchmark": benchmark,
        "metric": metric,
        "score": float(score),
        "n_scored": int(n_scored),
        "n_total": int(n_total),
        "splits": splits,
        "unresolved": unresolved,
        "n_missing": len(missing),
        "missing": list(missing[:MAX_LISTED]),
        "rules": rules,
    }
    result.update(extra)
    return result


def check_rules(benchmark: str, rules: str, allowed: Sequence[str] = ("official",)) -> None:
    """Refuse a rule set that ``benchmark`` does not have."""
    if rules not in allowed:
        raise ScoringError(
            f"{benchmark}: unknown rule set {rules!r}; choose from {', '.join(repr(r) for r in allowed)}"
        )
