"""GQA accuracy on the balanced questions (LLaVA-1.5 protocol).

LLaVA converts each model output with ``text.rstrip('.').lower()`` (``convert_gqa_for_eval.py``;
outputs were already whitespace-stripped at generation) and the official GQA ``eval.py`` then counts
exact string equality with the gold ``answer`` over the questions marked ``isBalanced``. Both steps
are reproduced: the post-processing is applied to every prediction (it is idempotent, so an answers
file that was already converted scores the same), the gold answer is compared verbatim.

Splits follow the official script: ``binary`` vs ``open`` (``open`` = structural type ``query``), and
accuracy per structural and per semantic type.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import read_json, read_records
from .result import as_str_id, build_result, check_rules, collect_answers, find_missing, pct


def postprocess_prediction(text: str) -> str:
    """LLaVA's GQA post-processing: strip whitespace, drop trailing periods, lower-case."""
    return text.strip().rstrip(".").lower()


def load_gqa(data: str | Path, with_unbalanced: bool = False) -> dict[str, dict[str, Any]]:
    """The balanced questions of an official GQA questions JSON (dict keyed by question id).

    With ``with_unbalanced=True`` the questions not marked ``isBalanced`` are returned as well.
    """
    path = Path(data)
    if path.is_dir():
        found = sorted(path.glob("*balanced_questions.json"))
        if len(found) != 1:
            raise ScoringError(
                f"{path}: expected exactly one '*balanced_questions.json' file, found {len(found)}"
            )
        path = found[0]
    content = read_json(path)
    if not isinstance(content, dict) or not content:
        raise ScoringError(
            f"{path}: expected the official GQA questions JSON (an object keyed by question id), "
            f"found {type(content).__name__}"
        )
    questions = {}
    for qid, q in content.items():
        if not isinstance(q, dict) or not isinstance(q.get("question"), str):
            raise ScoringError(f"{path}: question {qid!r}: not a GQA question object (no string 'question')")
        if q.get("isBalanced", True) is False and not with_unbalanced:
            continue
        if not isinstance(q.get("answer"), str):
            raise ScoringError(f"{path}: question {qid!r}: field 'answer' missing or not a string")
        questions[str(qid)] = q
    return questions


def score_gqa(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score a LLaVA GQA answers file (``[{"questionId", "prediction"}]``) against balanced questions."""
    check_rules("gqa", rules)
    answers_path = Path(answers)
    every = load_gqa(data, with_unbalanced=True)
    questions = {qid: q for qid, q in every.items() if q.get("isBalanced", True) is not False}
    preds = collect_answers(
        answers_path,
        read_records(answers_path),
        benchmark="gqa",
        id_field="questionId",
        text_field="prediction",
        known_ids=questions.keys(),
        normalize_id=as_str_id,
        ignorable_ids=every.keys(),  # answers to unbalanced questions are accepted, not scored
    )
    missing = find_missing(answers_path, questions.keys(), preds, strict)
    correct = 0
    groups: dict[str, dict[str, list[int]]] = {"answer_type": {}, "structural": {}, "semantic": {}}
    for qid, q in questions.items():
        hit = int(qid in preds and postprocess_prediction(preds[qid]) == q["answer"])
        correct += hit
        types = q.get("types") or {}
        structural = types.get("structural")
        if structural:
            groups["answer_type"].setdefault("open" if structural == "query" else "binary", []).append(hit)
            groups["structural"].setdefault(structural, []).append(hit)
        if types.get("semantic"):
            groups["semantic"].setdefault(types["semantic"], []).append(hit)
    splits = {
        kind: {
            label: {"score": pct(sum(v), len(v)), "n_total": len(v)} for label, v in sorted(labels.items())
        }
        for kind, labels in groups.items()
        if labels
    }
    return build_result(
        benchmark="gqa",
        metric="accuracy (exact match)",
        score=pct(correct, len(questions)),
        n_scored=len(preds),
        n_total=len(questions),
        splits=splits,
        unresolved=[],
        missing=missing,
    )
