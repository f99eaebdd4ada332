"""POPE (LLaVA ``eval_pope.py`` rules): accuracy, precision, recall, F1 and yes-ratio per split.

Data: a folder with the official ``coco_pope_{adversarial,popular,random}.json`` files (JSON Lines of
``{"question_id", "image", "text", "label"}``; the question ids restart in each file, so a question is
identified here as ``"<split>/<question_id>"``), or one JSON Lines file whose records carry a
``category`` (LLaVA's ``llava_pope_test.jsonl`` plus a ``label`` field) and globally unique ids.

Parsing an answer ``text``: keep the text before the first ``.``; delete commas; split on single
spaces; the answer is "no" if one of the words is exactly ``No``, ``no`` or ``not``, otherwise "yes".
(So ``"NO"`` or ``"Not"`` count as "yes", as in the reference.)

An unanswered question counts as a wrong answer (the label flipped). The score is the mean F1 over
the splits present, x 100 (what the LLaVA-1.5 paper reports); empty ratios are 0.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import read_records
from .result import build_result, check_rules, collect_answers, find_missing

SPLITS = ("adversarial", "popular", "random")
_FILE = re.compile(r"^coco_pope_(\w+)\.jsonl?$")


def parse_yes_no(text: str) -> str:
    """``"yes"`` or ``"no"`` by the rules in the module docstring."""
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def _read_jsonl_objects(path: Path) -> list[tuple[int, dict[str, Any]]]:
    out = []
    for rec in read_records(path):
        if not isinstance(rec.value, dict):
            raise ScoringError(f"{path}: line {rec.line}: expected a JSON object")
        out.append((rec.line, rec.value))
    return out


def load_pope(data: str | Path) -> dict[Any, dict[str, Any]]:
    """Question id -> ``{"split", "label", "image", "text"}`` in file order."""
    path = Path(data)
    questions: dict[Any, dict[str, Any]] = {}

    def add(qid: Any, split: str, line: int, rec: dict[str, Any], src: Path) -> None:
        for field in ("label", "text", "image"):
            if field not in rec:
                raise ScoringError(f"{src}: line {line}: question has no field '{field}'")
        label = str(rec["label"]).strip().lower()
        if label not in ("yes", "no"):
            raise ScoringError(
                f"{src}: line {line}: field 'label' must be 'yes' or 'no', got {rec['label']!r}"
            )
        if qid in questions:
            raise ScoringError(f"{src}: line {line}: duplicate question id {qid!r}")
        questions[qid] = {"split": split, "label": label, "image": rec["image"], "text": rec["text"]}

    if path.is_dir():
        files = sorted(p for p in path.iterdir() if _FILE.match(p.name))
        if not files:
            raise ScoringError(f"{path}: no coco_pope_<split>.json files in this folder")
        for f in files:
            split = _FILE.match(f.name).group(1)  # type: ignore[union-attr]
            for line, rec in _read_jsonl_objects(f):
                if "question_id" not in rec:
                    raise ScoringError(f"{f}: line {line}: question has no field 'question_id'")
                add(f"{split}/{rec['question_id']}", split, line, rec, f)
    else:
        for line, rec in _read_jsonl_objects(path):
            for field in ("question_id", "category"):
                if field not in rec:
                    raise ScoringError(f"{path}: line {line}: question has no field '{field}'")
            add(rec["question_id"], str(rec["category"]), line, rec, path)
    return questions


def binary_metrics(labels: list[str], preds: list[str]) -> dict[str, float]:
    """Accuracy, precision, recall, F1 (positive class "yes") and yes-ratio, each in 0..100."""
    tp = sum(1 for g, p in zip(labels, preds, strict=True) if g == "yes" and p == "yes")
    fp = sum(1 for g, p in zip(labels, preds, strict=True) if g == "no" and p == "yes")
    tn = sum(1 for g, p in zip(labels, preds, strict=True) if g == "no" and p == "no")
    fn = sum(1 for g, p in zip(labels, preds, strict=True) if g == "yes" and p == "no")
    n = len(labels)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": 100.0 * (tp + tn) / n if n else 0.0,
        "precision": 100.0 * precision,
        "recall": 100.0 * recall,
        "f1": 100.0 * f1,
        "yes_ratio": 100.0 * (tp + fp) / n if n else 0.0,
        "n_total": n,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def score_pope(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score a POPE answers file (``{"question_id", "text"}`` per line); see the module docstring."""
    check_rules("pope", rules)
    answers_path = Path(answers)
    questions = load_pope(data)
    preds = collect_answers(
        answers_path,
        read_records(answers_path),
        benchmark="pope",
        id_field="question_id",
        text_field="text",
        known_ids=questions.keys(),
    )
    missing = find_missing(answers_path, questions.keys(), preds, strict)
    per_split: dict[str, tuple[list[str], list[str]]] = {}
    for qid, q in questions.items():
        label = q["label"]
        pred = parse_yes_no(preds[qid]) if qid in preds else ("no" if label == "yes" else "yes")
        labels, predicted = per_split.setdefault(q["split"], ([], []))
        labels.append(label)
        predicted.append(pred)
    splits = {name: binary_metrics(*per_split[name]) for name in sorted(per_split)}
    score = sum(s["f1"] for s in splits.values()) / len(splits)
    return build_result(
        benchmark="pope",
        metric="F1 (mean over splits)",
        score=score,
        n_scored=len(preds),
        n_total=len(questions),
        splits=splits,
        unresolved=[],
        missing=missing,
    )
