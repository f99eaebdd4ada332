"""MME (official ``eval_tool/calculation.py`` rules).

Every image has two yes/no questions. Per subtask: ``acc`` = share of questions answered right,
``acc+`` = share of images whose two questions are both right, subtask score = ``(acc + acc+) x 100``
(0..200). The perception total sums the 10 perception subtasks (max 2000), the cognition total the 4
cognition subtasks (max 800). The result's ``score`` is the perception total - this is the one
scorer whose score is not on a 0..100 scale.

Parsing a prediction (lower-cased, not stripped - as the reference reads it): ``"yes"``/``"no"``
as is; otherwise ``"yes"`` if its first four characters contain ``yes``, else ``"no"`` if they contain
``no``, else ``"other"`` (wrong, and listed in ``unresolved``).

Data, either layout:

* the official release folder: ``<subtask>/<stem>.txt`` next to ``<stem>.jpg|.png``, or
  ``<subtask>/questions_answers_YN/<stem>.txt`` with ``<subtask>/images/<stem>.*``; each ``.txt``
  holds two ``question<TAB>answer`` lines;
* the eval-tool template folder: ``<subtask>.txt`` with ``image<TAB>question<TAB>answer`` lines.

A question's id is ``"<subtask>/<image>/<k>"`` with ``k`` = 0 or 1 (its order for that image).
Answers: JSON Lines / JSON array of ``{"question_id", "text"}``, or an eval-tool results folder
(``<subtask>.txt`` lines ``image<TAB>question<TAB>answer<TAB>prediction``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import Record, read_records, read_text_lines
from .result import build_result, check_rules, collect_answers, find_missing, pct

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


@dataclass(frozen=True)
class MMEQuestion:
    """One MME question."""

    qid: str
    subtask: str
    image: str
    question: str
    answer: str  # "yes" / "no"
    image_path: Path | None


def parse_prediction(text: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"`` by the rules in the module docstring."""
    text = text.lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def _split_line(path: Path, lineno: int, line: str, n: int) -> list[str]:
    parts = line.rstrip("\r\n").split("\t")
    if len(parts) < n:
        raise ScoringError(f"{path}: line {lineno}: expected {n} tab-separated fields, found {len(parts)}")
    return parts


def _gt(path: Path, lineno: int, raw: str) -> str:
    answer = raw.strip().lower()
    if answer not in ("yes", "no"):
        raise ScoringError(f"{path}: line {lineno}: answer field must be 'yes' or 'no', got {raw!r}")
    return answer


def _find_image(folder: Path, stem: str) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = folder / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _release_subtask(folder: Path, subtask: str) -> list[tuple[str, str, str, Path | None, Path, int]]:
    qa_dir, img_dir = folder / "questions_answers_YN", folder / "images"
    if not qa_dir.is_dir():
        qa_dir, img_dir = folder, folder
    rows = []
    for txt in sorted(qa_dir.glob("*.txt")):
        image_path = _find_image(img_dir, txt.stem)
        image = image_path.name if image_path else f"{txt.stem}.jpg"
        for lineno, line in enumerate(read_text_lines(txt), start=1):
            if not line.strip():
                continue
            question, answer = _split_line(txt, lineno, line, 2)[:2]
            rows.append((image, question, _gt(txt, lineno, answer), image_path, txt, lineno))
    return rows


def _template_subtask(
    path: Path, images_dir: Path | None
) -> list[tuple[str, str, str, Path | None, Path, int]]:
    rows = []
    for lineno, line in enumerate(read_text_lines(path), start=1):
        if not line.strip():
            continue
        image, question, answer = _split_line(path, lineno, line, 3)[:3]
        image_path = None
        if images_dir is not None:
            for candidate in (images_dir / path.stem / image, images_dir / path.stem / "images" / image):
                if candidate.is_file():
                    image_path = candidate
                    break
        rows.append((image, question, _gt(path, lineno, answer), image_path, path, lineno))
    return rows


def load_mme(data: str | Path, images_dir: str | Path | None = None) -> list[MMEQuestion]:
    """All MME questions found under ``data`` (either layout), subtask by subtask in official order."""
    root = Path(data)
    if not root.is_dir():
        raise ScoringError(f"{root}: expected the MME folder (release layout or eval-tool template)")
    questions: list[MMEQuestion] = []
    for subtask in SUBTASKS:
        if (root / subtask).is_dir():
            rows = _release_subtask(root / subtask, subtask)
        elif (root / f"{subtask}.txt").is_file():
            rows = _template_subtask(root / f"{subtask}.txt", Path(images_dir) if images_dir else None)
        else:
            continue
        per_image: dict[str, int] = {}
        for image, question, answer, image_path, src, lineno in rows:
            k = per_image.get(image, 0)
            if k >= 2:
                raise ScoringError(f"{src}: line {lineno}: image {image!r} has more than two questions")
            per_image[image] = k + 1
            questions.append(
                MMEQuestion(f"{subtask}/{image}/{k}", subtask, image, question, answer, image_path)
            )
        odd = [img for img, n in per_image.items() if n != 2]
        if odd:
            raise ScoringError(
                f"{root}: subtask {subtask}: image {odd[0]!r} has {per_image[odd[0]]} question(s), expected 2"
            )
    if not questions:
        raise ScoringError(
            f"{root}: no MME subtask found (expected folders or .txt files named {', '.join(SUBTASKS[:3])}, ...)"
        )
    return questions


def _results_dir_records(path: Path, questions: list[MMEQuestion]) -> list[Record]:
    """Answer records from an eval-tool results folder (4th column = prediction)."""
    key_to_qid = {(q.subtask, q.image, q.question): q.qid for q in questions}
    records = []
    for txt in sorted(path.glob("*.txt")):
        subtask = txt.stem
        for lineno, line in enumerate(read_text_lines(txt), start=1):
            if not line.strip():
                continue
            image, question, _, pred = _split_line(txt, lineno, line, 4)[:4]
            qid = key_to_qid.get((subtask, image, question), f"{subtask}/{image}/?{question}")
            records.append(Record(lineno, {"question_id": qid, "text": pred}))
    if not records:
        raise ScoringError(f"{path}: no <subtask>.txt result files in this folder")
    return records


def score_mme(
    data: str | Path, answers: str | Path, rules: str = "official", strict: bool = False
) -> dict[str, Any]:
    """Score MME answers; see the module docstring for formats and rules."""
    check_rules("mme", rules)
    answers_path = Path(answers)
    questions = load_mme(data)
    records = (
        _results_dir_records(answers_path, questions) if answers_path.is_dir() else read_records(answers_path)
    )
    preds = collect_answers(
        answers_path,
        records,
        benchmark="mme",
        id_field="question_id",
        text_field="text",
        known_ids={q.qid for q in questions},
    )
    missing = find_missing(answers_path, [q.qid for q in questions], preds, strict)
    unresolved = []
    per_task: dict[str, dict[str, Any]] = {}
    for q in questions:
        hit = False
        if q.qid in preds:
            parsed = parse_prediction(preds[q.qid])
            if parsed == "other":
                unresolved.append({"question_id": q.qid, "prediction": preds[q.qid], "reason": "not yes/no"})
            hit = parsed == q.answer
        task = per_task.setdefault(q.subtask, {"hits": [], "images": {}})
        task["hits"].append(hit)
        task["images"].setdefault(q.image, []).append(hit)
    subtasks = {}
    for name in SUBTASKS:
        if name not in per_task:
            continue
        hits, images = per_task[name]["hits"], per_task[name]["images"]
        acc = pct(sum(hits), len(hits))
        acc_plus = pct(sum(1 for v in images.values() if all(v)), len(images))
        subtasks[name] = {
            "acc": acc,
            "acc_plus": acc_plus,
            "score": acc + acc_plus,
            "n_total": len(hits),
            "n_images": len(images),
        }
    perception = sum(subtasks[t]["score"] for t in PERCEPTION if t in subtasks)
    cognition = sum(subtasks[t]["score"] for t in COGNITION if t in subtasks)
    splits = {
        "perception": {"score": perception, "subtasks_present": [t for t in PERCEPTION if t in subtasks]},
        "cognition": {"score": cognition, "subtasks_present": [t for t in COGNITION if t in subtasks]},
        "subtask": subtasks,
    }
    return build_result(
        benchmark="mme",
        metric="perception score (sum of acc+acc+ x100 over subtasks)",
        score=perception,
        n_scored=len(preds),
        n_total=len(questions),
        splits=splits,
        unresolved=unresolved,
        missing=missing,
        cognition_score=cognition,
        subtasks_absent=[t for t in SUBTASKS if t not in subtasks],
    )
