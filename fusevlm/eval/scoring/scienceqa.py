"""ScienceQA-IMG accuracy (LLaVA-1.5 ``eval_science_qa.py`` rules).

Questions: the test-split problems of the official ``problems.json`` that have an image (the test ids
come from ``pid_splits.json`` next to it when present, otherwise from each problem's ``split``).

Letter extraction from an answer ``text`` (whitespace-stripped, as LLaVA's generation script does):

1. ``text`` is exactly one of ``A B C D E`` -> that letter;
2. ``text`` starts with a letter of ``A..E`` followed by ``". "`` (e.g. ``"B. dog"``) -> that letter;
3. the pattern ``The answer is ([A-Z]).`` (any character after the letter, so ``"The answer is B"``
   at the very end does *not* match) occurs exactly once -> its letter;
4. otherwise the answer is unresolved.

A letter beyond the question's number of choices is wrong. Answers may also cover the test questions
without an image (LLaVA answers the whole test split); those are accepted and ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import read_json, read_records
from .result import as_str_id, build_result, check_rules, collect_answers, find_missing, pct

OPTIONS = ("A", "B", "C", "D", "E")
_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def extract_letter(text: str) -> str | None:
    """The answer letter by the rules in the module docstring, or ``None`` if unresolved."""
    text = text.strip()
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _ANSWER_IS.findall(text)
    return found[0] if len(found) == 1 else None


def load_scienceqa(data: str | Path) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(all problems by id, test ids in split order) from ``problems.json`` or its folder."""
    path = Path(data)
    problems_path = path / "problems.json" if path.is_dir() else path
    problems = read_json(problems_path)
    if not isinstance(problems, dict) or not problems:
        raise ScoringError(
            f"{problems_path}: expected ScienceQA problems.json (an object keyed by problem id)"
        )
    splits_path = problems_path.parent / "pid_splits.json"
    if splits_path.is_file():
        splits = read_json(splits_path)
        if not isinstance(splits, dict) or not isinstance(splits.get("test"), list):
            raise ScoringError(f"{splits_path}: expected an object with a 'test' list of problem ids")
        test_ids = [str(pid) for pid in splits["test"]]
        absent = [pid for pid in test_ids if pid not in problems]
        if absent:
            raise ScoringError(f"{splits_path}: test id {absent[0]!r} is not in {problems_path.name}")
    else:
        test_ids = [
            str(pid) for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == "test"
        ]
    for pid in test_ids:
        p = problems[pid]
        if not isinstance(p, dict):
            raise ScoringError(f"{problems_path}: problem {pid!r} is not an object")
        for field in ("question", "choices", "answer"):
            if field not in p:
                raise ScoringError(f"{problems_path}: problem {pid!r} has no field '{field}'")
        if not isinstance(p["choices"], list) or not isinstance(p["answer"], int):
            raise ScoringError(
                f"{problems_path}: problem {pid!r}: 'choices' must be a list and 'answer' an int"
            )
    return problems, test_ids


def image_test_ids(problems: dict[str, dict[str, Any]], test_ids: list[str]) -> list[str]:
    """The test problems that come with an image (ScienceQA-IMG)."""
    return [pid for pid in test_ids if problems[pid].get("image")]


def score_scienceqa(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score a LLaVA-style answers file (``{"question_id", "text"}`` per line) on ScienceQA-IMG."""
    check_rules("scienceqa", rules)
    answers_path = Path(answers)
    problems, test_ids = load_scienceqa(data)
    img_ids = image_test_ids(problems, test_ids)
    preds = collect_answers(
        answers_path,
        read_records(answers_path),
        benchmark="scienceqa",
        id_field="question_id",
        text_field="text",
        known_ids=set(img_ids),
        normalize_id=as_str_id,
        ignorable_ids=set(test_ids),
    )
    missing = find_missing(answers_path, img_ids, preds, strict)
    correct = 0
    unresolved = []
    by_subject: dict[str, list[int]] = {}
    for pid in img_ids:
        p = problems[pid]
        hit = 0
        if pid in preds:
            letter = extract_letter(preds[pid])
            if letter is None:
                unresolved.append({"question_id": pid, "prediction": preds[pid], "reason": "no-letter"})
            elif letter in OPTIONS[: len(p["choices"])]:
                hit = int(OPTIONS.index(letter) == p["answer"])
        correct += hit
        by_subject.setdefault(str(p.get("subject", "unknown")), []).append(hit)
    splits = {
        "subject": {
            s: {"score": pct(sum(v), len(v)), "n_total": len(v)} for s, v in sorted(by_subject.items())
        }
    }
    return build_result(
        benchmark="scienceqa",
        metric="IMG accuracy",
        score=pct(correct, len(img_ids)),
        n_scored=len(preds),
        n_total=len(img_ids),
        splits=splits,
        unresolved=unresolved,
        missing=missing,
    )
