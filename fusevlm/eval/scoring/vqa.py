"""VQA accuracy for VQAv2, TextVQA and VizWiz.

Accuracy of one prediction against the human answers: each human answer is left out in turn, the
prediction scores ``min(1, matches among the remaining answers / 3)``, and those scores are averaged.
The benchmark score is the mean over all questions x 100 (unanswered questions count 0).

How predictions and human answers are normalised depends on ``rules``:

``official`` - GT-Vision-Lab ``vqaEval.py`` (all three benchmarks)
    The prediction: newlines/tabs -> spaces, strip, punctuation step, digit/article/contraction step.
    The human answers: *only if they are not all identical*, the punctuation step alone (no
    lower-casing, no number words, no articles). When all answers agree they are compared verbatim, so
    e.g. ten ``"t-shirt"`` answers never match any prediction (the prediction becomes ``"t shirt"``).

``evalai`` - the EvalAI answer processor as LLaVA and lmms-eval apply it
    VQAv2 / VizWiz (lmms-eval ``process_results``; LLaVA uploads predictions processed the same way):
    the prediction goes through the full EvalAI processor; human answers are whitespace-stripped and,
    only if they are not all identical, both they and the prediction go through the punctuation and
    digit/article steps again.
    TextVQA (M4C ``TextVQAAccuracyEvaluator``, used by LLaVA's ``eval_textvqa``): prediction and every
    human answer go through the full EvalAI processor.

The leave-one-out is by position among the human answers (the reference code removes answers by
dict inequality, which is the same thing for VQAv2 where every answer has an ``answer_id``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import read_json, read_records
from .normalize import (
    clean_whitespace,
    evalai_normalize,
    official_normalize,
    process_digit_article,
    process_punctuation,
)
from .result import as_int_id, build_result, check_rules, collect_answers, find_missing, pct

RULES = ("official", "evalai")


@dataclass
class VQAItem:
    """One question: its id, the human answers and the split labels it is reported under."""

    qid: Any
    answers: list[str]
    groups: dict[str, str] = field(default_factory=dict)


def leave_one_out_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Mean over the answers of ``min(1, matches among the other answers / 3)`` (no normalisation)."""
    if not answers:
        return 0.0
    total = sum(1 for a in answers if a == prediction)
    per_answer = [min(1.0, (total - (1 if a == prediction else 0)) / 3.0) for a in answers]
    return sum(per_answer) / len(per_answer)


def vqa_accuracy(
    prediction: str, answers: Sequence[str], rules: str = "official", textvqa: bool = False
) -> float:
    """Accuracy (0..1) of one raw prediction against raw human answers under ``rules``.

    ``textvqa=True`` selects the M4C TextVQA variant of the ``evalai`` rules (every human answer fully
    processed); it makes no difference under ``official``.
    """
    check_rules("vqa", rules, RULES)
    answers = list(answers)
    if rules == "official":
        pred = official_normalize(prediction)
        if len(set(answers)) > 1:
            answers = [process_punctuation(a, "official") for a in answers]
        return leave_one_out_accuracy(pred, answers)
    pred = evalai_normalize(prediction)
    if textvqa:
        return leave_one_out_accuracy(pred, [evalai_normalize(a) for a in answers])
    answers = [clean_whitespace(a) for a in answers]
    if len(set(answers)) > 1:
        answers = [process_digit_article(process_punctuation(a, "evalai")) for a in answers]
        pred = process_digit_article(process_punctuation(pred, "evalai"))
    return leave_one_out_accuracy(pred, answers)


# ----------------------------------------------------------------------------------------------
# data files


def _answer_strings(path: Path, where: str, raw: Any, nested: bool) -> list[str]:
    if not isinstance(raw, list) or not raw:
        raise ScoringError(f"{path}: {where}: field 'answers' must be a non-empty list")
    out = []
    for k, ans in enumerate(raw):
        if nested:
            if not isinstance(ans, dict) or not isinstance(ans.get("answer"), str):
                raise ScoringError(f"{path}: {where}: answers[{k}] must be an object with a string 'answer'")
            out.append(ans["answer"])
        else:
            if not isinstance(ans, str):
                raise ScoringError(f"{path}: {where}: answers[{k}] must be a string")
            out.append(ans)
    return out


_SPLIT_TAGS = ("test-dev2015", "test2015", "train2014", "val2014")


def _sibling(path: Path, kind: str) -> Path | None:
    """The one ``*<kind>*.json`` next to ``path``, preferring the one of the same split."""
    found = [p for p in path.parent.glob("*.json") if kind in p.name.lower()]
    tag = next((t for t in _SPLIT_TAGS if t in path.name), None)
    if tag is not None and len(found) > 1:
        found = [p for p in found if tag in p.name]
    return found[0] if len(found) == 1 else None


def find_vqav2_files(data: str | Path) -> tuple[Path | None, Path | None]:
    """Locate the VQAv2 (questions JSON, annotations JSON) given a file or a directory holding them."""
    data = Path(data)
    if not data.exists():
        raise ScoringError(f"{data}: file not found")
    if data.is_dir():
        jsons = sorted(data.glob("*.json"))
        questions = [p for p in jsons if "question" in p.name.lower()]
        annotations = [p for p in jsons if "annotation" in p.name.lower()]
        for kind, found in (("questions", questions), ("annotations", annotations)):
            if len(found) > 1:
                names = ", ".join(p.name for p in found)
                raise ScoringError(f"{data}: several VQAv2 {kind} files ({names}); pass the file itself")
        return (questions[0] if questions else None), (annotations[0] if annotations else None)
    name = data.name.lower()
    if "annotation" in name:
        return _sibling(data, "question"), data
    if "question" in name:
        return data, _sibling(data, "annotation")
    content = read_json(data)
    if isinstance(content, dict) and "annotations" in content:
        return None, data
    if isinstance(content, dict) and "questions" in content:
        return data, None
    raise ScoringError(
        f"{data}: not a VQAv2 questions or annotations JSON (no 'questions'/'annotations' key)"
    )


def _load_object(path: Path, key: str, benchmark: str) -> list[Any]:
    content = read_json(path)
    if not isinstance(content, dict) or key not in content:
        found = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise ScoringError(f"{path}: expected a {benchmark} JSON object with key '{key}', found {found}")
    items = content[key]
    if not isinstance(items, list):
        raise ScoringError(f"{path}: field '{key}' must be a list")
    return items


def load_vqav2(data: str | Path) -> list[VQAItem]:
    """Questions with human answers from the official VQAv2 annotations JSON."""
    _, ann_path = find_vqav2_files(data)
    if ann_path is None:
        raise ScoringError(
            f"{data}: no VQAv2 annotations JSON (the questions file holds no answers; pass "
            "v2_mscoco_<split>_annotations.json or the folder holding it)"
        )
    items = []
    for i, ann in enumerate(_load_object(ann_path, "annotations", "VQAv2 annotations")):
        where = f"annotations[{i}]"
        if not isinstance(ann, dict) or "question_id" not in ann or "answers" not in ann:
            raise ScoringError(f"{ann_path}: {where}: needs fields 'question_id' and 'answers'")
        answers = _answer_strings(ann_path, where, ann["answers"], nested=True)
        items.append(
            VQAItem(as_int_id(ann["question_id"]), answers, {"answer_type": str(ann.get("answer_type", ""))})
        )
    return items


def load_textvqa(data: str | Path) -> list[VQAItem]:
    """Questions with human answers from the official TextVQA JSON (``{"data": [...]}``)."""
    path = Path(data)
    items = []
    for i, rec in enumerate(_load_object(path, "data", "TextVQA")):
        where = f"data[{i}]"
        if not isinstance(rec, dict) or "question_id" not in rec:
            raise ScoringError(f"{path}: {where}: needs field 'question_id'")
        if "answers" not in rec:
            raise ScoringError(
                f"{path}: {where}: has no field 'answers' (test split? it cannot be scored locally)"
            )
        items.append(
            VQAItem(as_int_id(rec["question_id"]), _answer_strings(path, where, rec["answers"], nested=False))
        )
    return items


def load_vizwiz(data: str | Path) -> list[VQAItem]:
    """Questions with human answers from the official VizWiz annotation list (keyed by image name)."""
    path = Path(data)
    content = read_json(path)
    if not isinstance(content, list):
        found = sorted(content)[:8] if isinstance(content, dict) else type(content).__name__
        raise ScoringError(f"{path}: expected the VizWiz annotation list (a JSON array), found {found}")
    items = []
    for i, rec in enumerate(content):
        where = f"entry {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            raise ScoringError(f"{path}: {where}: needs a string field 'image'")
        if "answers" not in rec:
            raise ScoringError(
                f"{path}: {where}: has no field 'answers' (test split? it cannot be scored locally)"
            )
        answers = _answer_strings(path, where, rec["answers"], nested=True)
        groups = {"answer_type": str(rec.get("answer_type", ""))}
        if "answerable" in rec:
            if rec["answerable"] not in (0, 1, True, False):
                raise ScoringError(f"{path}: {where}: field 'answerable' must be 0 or 1")
            groups["answerable"] = "answerable" if rec["answerable"] else "unanswerable"
        items.append(VQAItem(rec["image"], answers, groups))
    return items


# ----------------------------------------------------------------------------------------------
# scoring


def _score_items(
    benchmark: str,
    items: list[VQAItem],
    answers_path: Path,
    *,
    id_field: str,
    normalize_id: Any,
    rules: str,
    strict: bool,
    textvqa: bool = False,
) -> dict[str, Any]:
    check_rules(benchmark, rules, RULES)
    ids = [it.qid for it in items]
    if len(set(ids)) != len(ids):
        raise ScoringError(f"{benchmark}: the data file lists some question ids more than once")
    answers = collect_answers(
        answers_path,
        read_records(answers_path),
        benchmark=benchmark,
        id_field=id_field,
        text_field="answer",
        known_ids=set(ids),
        normalize_id=normalize_id,
    )
    missing = find_missing(answers_path, ids, answers, strict)
    total = 0.0
    groups: dict[str, dict[str, list[float]]] = {}
    for it in items:
        acc = vqa_accuracy(answers[it.qid], it.answers, rules, textvqa=textvqa) if it.qid in answers else 0.0
        total += acc
        for kind, label in it.groups.items():
            if label:
                groups.setdefault(kind, {}).setdefault(label, []).append(acc)
    splits = {
        kind: {
            label: {"score": pct(sum(v), len(v)), "n_total": len(v)} for label, v in sorted(labels.items())
        }
        for kind, labels in groups.items()
    }
    return build_result(
        benchmark=benchmark,
        metric="VQA accuracy",
        score=pct(total, len(items)),
        n_scored=len(answers),
        n_total=len(items),
        splits=splits,
        unresolved=[],
        missing=missing,
        rules=rules,
    )


def score_vqav2(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score an EvalAI-format VQAv2 answers file (``[{"question_id", "answer"}]``) against annotations.

    ``data`` is the annotations JSON or a folder holding it. Splits: per ``answer_type``
    (``yes/no``, ``number``, ``other``).
    """
    return _score_items(
        "vqav2",
        load_vqav2(data),
        Path(answers),
        id_field="question_id",
        normalize_id=as_int_id,
        rules=rules,
        strict=strict,
    )


def score_textvqa(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score a TextVQA answers file (``[{"question_id", "answer"}]``) against ``TextVQA_0.5.1_val.json``."""
    return _score_items(
        "textvqa",
        load_textvqa(data),
        Path(answers),
        id_field="question_id",
        normalize_id=as_int_id,
        rules=rules,
        strict=strict,
        textvqa=True,
    )


def score_vizwiz(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score a VizWiz answers file (``[{"image", "answer"}]``) against the annotation list.

    ``"unanswerable"`` is scored like any other answer. Splits: ``answerable`` (answerable /
    unanswerable questions) and ``answer_type``.
    """
    return _score_items(
        "vizwiz",
        load_vizwiz(data),
        Path(answers),
        id_field="image",
        normalize_id=lambda v: v,
        rules=rules,
        strict=strict,
    )
