"""What to ask the model for each benchmark, and writing its answers in the official format.

:func:`load_questions` returns ``[{"question_id", "image", "prompt"}]`` with the LLaVA-1.5 prompts:

* VQAv2, GQA, TextVQA, POPE: ``question + SHORT_ANSWER``;
* VizWiz: ``question + UNANSWERABLE_HINT + SHORT_ANSWER``;
* MMBench(-CN): ``[hint + "\\n"] + question`` then one ``"A. option"`` line per option, then
  the English or Chinese letter instruction; ``image`` is the decoded image bytes from the TSV;
* ScienceQA-IMG: ``["Context: " + hint + "\\n"] + question`` then ``"A. choice"`` lines, then the
  English letter instruction (lmms-eval's reproduction of LLaVA-1.5's ``llava_test_CQM-A.json``);
* MME: the question without its trailing ``" Please answer yes or no."``, then ``SHORT_ANSWER``
  (lmms-eval's LLaVA default).

Every ``image`` is a :class:`~pathlib.Path` under ``images_dir`` except MMBench's (``bytes``).

:func:`write_answers` writes what the scorers (and the official servers) read; ``predictions`` is a
list of ``{"question_id", "answer"}`` dicts (``"text"`` is accepted for ``"answer"``) or a mapping
question id -> answer text.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ScoringError
from .files import read_json
from .gqa import load_gqa, postprocess_prediction
from .mmbench import is_absent, load_mmbench, row_options, write_submission_sheet
from .mme import load_mme
from .normalize import evalai_normalize
from .pope import load_pope
from .result import as_int_id
from .scienceqa import image_test_ids, load_scienceqa
from .vqa import find_vqav2_files

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."
UNANSWERABLE_HINT = "\nWhen the provided information is insufficient, respond with 'Unanswerable'."
LETTER_INSTRUCTION = "\nAnswer with the option's letter from the given choices directly."
LETTER_INSTRUCTION_CN = "\n请直接回答选项字母。"
MME_YES_NO = " Please answer yes or no."

BENCHMARKS = ("vqav2", "textvqa", "vizwiz", "gqa", "mmbench", "mmbench_cn", "scienceqa", "pope", "mme")


def _q(qid: Any, image: Any, prompt: str) -> dict[str, Any]:
    return {"question_id": qid, "image": image, "prompt": prompt}


def _vqav2(data: Path, images: Path) -> list[dict[str, Any]]:
    q_path, _ = find_vqav2_files(data)
    if q_path is None:
        raise ScoringError(f"{data}: no VQAv2 questions JSON (v2_OpenEnded_mscoco_<split>_questions.json)")
    content = read_json(q_path)
    if not isinstance(content, dict) or not isinstance(content.get("questions"), list):
        raise ScoringError(f"{q_path}: expected a VQAv2 questions JSON with a 'questions' list")
    subtype = content.get("data_subtype") or next(
        (s for s in ("train2014", "val2014", "test2015", "test-dev2015") if s in q_path.name), None
    )
    if subtype is None:
        raise ScoringError(f"{q_path}: no 'data_subtype' to name the COCO images (e.g. val2014)")
    folder = "test2015" if subtype == "test-dev2015" else subtype
    out = []
    for i, q in enumerate(content["questions"]):
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= q.keys():
            raise ScoringError(f"{q_path}: questions[{i}]: needs 'question_id', 'image_id' and 'question'")
        image = images / f"COCO_{folder}_{int(q['image_id']):012d}.jpg"
        out.append(_q(as_int_id(q["question_id"]), image, q["question"] + SHORT_ANSWER))
    return out


def _textvqa(data: Path, images: Path) -> list[dict[str, Any]]:
    content = read_json(data)
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ScoringError(f"{data}: expected the TextVQA JSON with a 'data' list")
    out = []
    for i, q in enumerate(content["data"]):
        if not isinstance(q, dict) or not {"question_id", "image_id", "question"} <= q.keys():
            raise ScoringError(f"{data}: data[{i}]: needs 'question_id', 'image_id' and 'question'")
        out.append(
            _q(as_int_id(q["question_id"]), images / f"{q['image_id']}.jpg", q["question"] + SHORT_ANSWER)
        )
    return out


def _vizwiz(data: Path, images: Path) -> list[dict[str, Any]]:
    content = read_json(data)
    if not isinstance(content, list):
        raise ScoringError(f"{data}: expected the VizWiz annotation list (a JSON array)")
    out = []
    for i, q in enumerate(content):
        if not isinstance(q, dict) or not isinstance(q.get("image"), str) or "question" not in q:
            raise ScoringError(f"{data}: entry {i}: needs 'image' and 'question'")
        out.append(_q(q["image"], images / q["image"], q["question"] + UNANSWERABLE_HINT + SHORT_ANSWER))
    return out


def _gqa(data: Path, images: Path) -> list[dict[str, Any]]:
    out = []
    for qid, q in load_gqa(data).items():
        out.append(_q(qid, images / f"{q['imageId']}.jpg", q["question"] + SHORT_ANSWER))
    return out


def _decode_image(path: Path, row: Mapping[str, Any], by_index: Mapping[int, Mapping[str, Any]]) -> bytes:
    raw = row.get("image")
    if isinstance(raw, str) and raw.strip().isdigit() and len(raw.strip()) <= 64:
        ref = by_index.get(int(raw.strip()))  # circular copies may point at the original row's image
        raw = ref.get("image") if ref else None
    if not isinstance(raw, str) or not raw:
        raise ScoringError(f"{path}: index {row['index']}: field 'image' is empty")
    try:
        return base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise ScoringError(f"{path}: index {row['index']}: field 'image' is not base64 ({exc})") from exc


def _mmbench(data: Path, images: Path | None, chinese: bool) -> list[dict[str, Any]]:
    df, letters = load_mmbench(data, need_answers=False)
    if "image" not in df.columns:
        raise ScoringError(f"{data}: no column 'image'")
    rows = df.to_dict("records")
    by_index = {row["index"]: row for row in rows}
    out = []
    for row in rows:
        question = str(row["question"])
        if "hint" in row and not is_absent(row["hint"]):
            question = f"{row['hint']}\n{question}"
        for letter, text in row_options(row, letters, stop_at_gap=True).items():
            question += f"\n{letter}. {text}"
        question += LETTER_INSTRUCTION_CN if chinese else LETTER_INSTRUCTION
        out.append(_q(row["index"], _decode_image(data, row, by_index), question))
    return out


def _scienceqa(data: Path, images: Path) -> list[dict[str, Any]]:
    problems, test_ids = load_scienceqa(data)
    out = []
    for pid in image_test_ids(problems, test_ids):
        p = problems[pid]
        context = f"Context: {p['hint']}\n" if p.get("hint") else ""
        choices = "\n".join(f"{chr(ord('A') + i)}. {c}" for i, c in enumerate(p["choices"]))
        prompt = f"{context}{p['question']}\n{choices}{LETTER_INSTRUCTION}"
        out.append(_q(pid, images / pid / str(p["image"]), prompt))
    return out


def _pope(data: Path, images: Path) -> list[dict[str, Any]]:
    return [_q(qid, images / q["image"], q["text"] + SHORT_ANSWER) for qid, q in load_pope(data).items()]


def _mme(data: Path, images: Path | None) -> list[dict[str, Any]]:
    out = []
    for q in load_mme(data, images):
        image = q.image_path or ((images or data) / q.subtask / q.image)
        out.append(_q(q.qid, image, q.question.strip().replace(MME_YES_NO, "") + SHORT_ANSWER))
    return out


def load_questions(
    benchmark: str, data: str | Path, images_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """The questions of ``benchmark`` to ask: ``[{"question_id", "image", "prompt"}]`` (see module doc).

    ``images_dir`` is the folder of the benchmark's images (COCO ``val2014`` for VQAv2/POPE,
    ``train_images`` for TextVQA, ``val`` for VizWiz, ``images`` for GQA, ``images/test`` for
    ScienceQA). It is not needed for MMBench (images are in the TSV) nor for MME's release layout.
    """
    data = Path(data)
    images = Path(images_dir) if images_dir is not None else None
    if benchmark in ("mmbench", "mmbench_cn"):
        return _mmbench(data, images, chinese=benchmark == "mmbench_cn")
    if benchmark == "mme":
        return _mme(data, images)
    if benchmark not in BENCHMARKS:
        raise ScoringError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if images is None:
        raise ScoringError(f"{benchmark}: images_dir is required")
    loader = {
        "vqav2": _vqav2,
        "textvqa": _textvqa,
        "vizwiz": _vizwiz,
        "gqa": _gqa,
        "scienceqa": _scienceqa,
        "pope": _pope,
    }[benchmark]
    return loader(data, images)


# ----------------------------------------------------------------------------------------------
# writing answers


def _as_mapping(predictions: Mapping[Any, str] | Iterable[Mapping[str, Any]]) -> dict[Any, str]:
    if isinstance(predictions, Mapping):
        return {k: ("" if v is None else str(v)) for k, v in predictions.items()}
    out: dict[Any, str] = {}
    for i, p in enumerate(predictions):
        if not isinstance(p, Mapping) or "question_id" not in p or not ({"answer", "text"} & p.keys()):
            raise ScoringError(f"prediction {i}: expected a dict with 'question_id' and 'answer'")
        text = p["answer"] if "answer" in p else p["text"]
        if p["question_id"] in out:
            raise ScoringError(f"prediction {i}: duplicate question_id {p['question_id']!r}")
        out[p["question_id"]] = "" if text is None else str(text)
    return out


def _dump_json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")


def _dump_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _write_mme(data: Path, preds: dict[Any, str], path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    by_task: dict[str, list[str]] = {}
    for q in load_mme(data):
        if q.qid not in preds:
            continue
        pred = preds[q.qid].replace("\t", " ").replace("\n", " ")
        answer = "Yes" if q.answer == "yes" else "No"
        by_task.setdefault(q.subtask, []).append(f"{q.image}\t{q.question}\t{answer}\t{pred}")
    for task, lines in by_task.items():
        (path / f"{task}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_answers(
    benchmark: str,
    predictions: Mapping[Any, str] | Iterable[Mapping[str, Any]],
    path: str | Path,
    data: str | Path | None = None,
    rules: str = "official",
) -> Path:
    """Write ``predictions`` in ``benchmark``'s submission format and return the path written.

    * ``vqav2``, ``textvqa``: JSON array ``[{"question_id", "answer"}]`` (EvalAI);
    * ``vizwiz``: JSON array ``[{"image", "answer"}]`` (EvalAI);
    * ``gqa``: JSON array ``[{"questionId", "prediction"}]`` after LLaVA's post-processing;
    * ``scienceqa``, ``pope``: JSON Lines ``{"question_id", "text"}`` (LLaVA answers files);
    * ``mmbench``, ``mmbench_cn``: submission sheet (``.xlsx``/``.csv``/``.tsv`` by suffix) - needs ``data``;
    * ``mme``: eval-tool results folder (``<subtask>.txt``) - needs ``data``.

    For VQAv2/TextVQA/VizWiz, ``rules="evalai"`` applies the EvalAI answer processor to each answer
    first, as LLaVA's conversion scripts do before uploading; ``"official"`` writes answers as given
    (whitespace-stripped).
    """
    preds = _as_mapping(predictions)
    path = Path(path)
    if benchmark in ("vqav2", "textvqa", "vizwiz"):
        if rules not in ("official", "evalai"):
            raise ScoringError(f"{benchmark}: unknown rule set {rules!r}")
        key = "image" if benchmark == "vizwiz" else "question_id"

        def fix(text: str) -> str:
            return evalai_normalize(text) if rules == "evalai" else text.strip()

        _dump_json([{key: qid, "answer": fix(text)} for qid, text in preds.items()], path)
    elif benchmark == "gqa":
        _dump_json(
            [{"questionId": qid, "prediction": postprocess_prediction(t)} for qid, t in preds.items()], path
        )
    elif benchmark in ("scienceqa", "pope"):
        _dump_jsonl(({"question_id": qid, "text": text} for qid, text in preds.items()), path)
    elif benchmark in ("mmbench", "mmbench_cn", "mme"):
        if data is None:
            raise ScoringError(f"{benchmark}: write_answers needs the benchmark data file (data=...)")
        if benchmark == "mme":
            _write_mme(Path(data), preds, path)
        else:
            write_submission_sheet(data, {as_int_id(k): v for k, v in preds.items()}, path)
    else:
        raise ScoringError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    return path
