"""Fixtures: tiny benchmark files in the official formats, written to ``tmp_path``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

if str(Path(__file__).parent) not in sys.path:  # make scoring_builders importable in any import mode
    sys.path.insert(0, str(Path(__file__).parent))

from scoring_builders import MMBENCH_HEADER, mmbench_rows, vqa_answers, write_json, write_jsonl  # noqa: E402


@pytest.fixture
def vqav2_dir(tmp_path: Path) -> Path:
    """VQAv2 val questions + annotations for four questions (one per answer type, two 'other')."""
    d = tmp_path / "vqav2"
    anns = [
        # all ten agree on a hyphenated answer: the official scorer compares it verbatim
        {
            "question_id": 1,
            "image_id": 42,
            "question_type": "what",
            "answer_type": "other",
            "multiple_choice_answer": "t-shirt",
            "answers": vqa_answers("t-shirt*10"),
        },
        {
            "question_id": 2,
            "image_id": 42,
            "question_type": "how many",
            "answer_type": "number",
            "multiple_choice_answer": "2",
            "answers": vqa_answers("2*2", "3*8"),
        },
        {
            "question_id": 3,
            "image_id": 7,
            "question_type": "is the",
            "answer_type": "yes/no",
            "multiple_choice_answer": "yes",
            "answers": vqa_answers("yes*9", "no*1"),
        },
        {
            "question_id": 4,
            "image_id": 7,
            "question_type": "what",
            "answer_type": "other",
            "multiple_choice_answer": "red",
            "answers": vqa_answers("red*5", "dark red*5"),
        },
    ]
    questions = [
        {"question_id": 1, "image_id": 42, "question": "What is the man wearing?"},
        {"question_id": 2, "image_id": 42, "question": "How many dogs are there?"},
        {"question_id": 3, "image_id": 7, "question": "Is the light on?"},
        {"question_id": 4, "image_id": 7, "question": "What color is the car?"},
    ]
    write_json(d / "v2_mscoco_val2014_annotations.json", {"data_subtype": "val2014", "annotations": anns})
    write_json(
        d / "v2_OpenEnded_mscoco_val2014_questions.json",
        {"data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions},
    )
    return d


@pytest.fixture
def textvqa_file(tmp_path: Path) -> Path:
    data = [
        {"question_id": 10, "image_id": "abc", "question": "What brand is it?", "answers": ["Nike"] * 10},
        {
            "question_id": 11,
            "image_id": "def",
            "question": "What does the sign say?",
            "answers": ["stop"] * 6 + ["STOP!"] * 4,
        },
    ]
    return write_json(tmp_path / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "data": data})


@pytest.fixture
def vizwiz_file(tmp_path: Path) -> Path:
    def answers(*specs: str) -> list[dict[str, str]]:
        return [{"answer": a["answer"], "answer_confidence": "yes"} for a in vqa_answers(*specs)]

    data = [
        {
            "image": "VizWiz_val_00000000.jpg",
            "question": "What is this?",
            "answerable": 1,
            "answer_type": "other",
            "answers": answers("soup*4", "can*6"),
        },
        {
            "image": "VizWiz_val_00000001.jpg",
            "question": "What color?",
            "answerable": 0,
            "answer_type": "unanswerable",
            "answers": answers("unanswerable*8", "blue*2"),
        },
    ]
    return write_json(tmp_path / "val.json", data)


@pytest.fixture
def gqa_file(tmp_path: Path) -> Path:
    qs = {
        "201": {
            "imageId": "n1",
            "question": "Is the cup on the table?",
            "answer": "yes",
            "isBalanced": True,
            "types": {"structural": "verify", "semantic": "rel", "detailed": "relVerify"},
        },
        "202": {
            "imageId": "n1",
            "question": "What is on the table?",
            "answer": "cup",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "rel", "detailed": "relS"},
        },
        "203": {
            "imageId": "n2",
            "question": "What color is the sky?",
            "answer": "blue",
            "isBalanced": True,
            "types": {"structural": "query", "semantic": "attr", "detailed": "color"},
        },
        "204": {
            "imageId": "n2",
            "question": "Unbalanced one?",
            "answer": "no",
            "isBalanced": False,
            "types": {"structural": "verify", "semantic": "attr", "detailed": "x"},
        },
    }
    return write_json(tmp_path / "testdev_balanced_questions.json", qs)


@pytest.fixture
def mmbench_file(tmp_path: Path) -> Path:
    path = tmp_path / "MMBench_DEV_EN.tsv"
    lines = ["\t".join(MMBENCH_HEADER)] + ["\t".join(r) for r in mmbench_rows()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def scienceqa_dir(tmp_path: Path) -> Path:
    d = tmp_path / "scienceqa"
    problems = {
        "1": {
            "question": "Which is a mammal?",
            "choices": ["shark", "whale"],
            "answer": 1,
            "hint": "",
            "image": "image.png",
            "subject": "natural science",
            "split": "test",
        },
        "2": {
            "question": "Which word rhymes?",
            "choices": ["cat", "dog", "hat"],
            "answer": 2,
            "hint": "Read the poem.",
            "image": "image.png",
            "subject": "language science",
            "split": "test",
        },
        "3": {
            "question": "Which is a state?",
            "choices": ["Ohio", "Paris"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "subject": "social science",
            "split": "test",
        },
        "4": {
            "question": "Pick one.",
            "choices": ["x", "y"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "subject": "social science",
            "split": "test",
        },
        "5": {
            "question": "No image here.",
            "choices": ["x", "y"],
            "answer": 0,
            "hint": "",
            "image": None,
            "subject": "social science",
            "split": "test",
        },
        "6": {
            "question": "Train question.",
            "choices": ["x", "y"],
            "answer": 0,
            "hint": "",
            "image": "image.png",
            "subject": "social science",
            "split": "train",
        },
    }
    write_json(d / "problems.json", problems)
    write_json(d / "pid_splits.json", {"train": ["6"], "val": [], "test": ["1", "2", "3", "4", "5"]})
    return d


@pytest.fixture
def pope_dir(tmp_path: Path) -> Path:
    d = tmp_path / "pope"
    random_rows = [
        {
            "question_id": 1,
            "image": "COCO_val2014_000000000001.jpg",
            "text": "Is there a dog in the image?",
            "label": "yes",
        },
        {
            "question_id": 2,
            "image": "COCO_val2014_000000000001.jpg",
            "text": "Is there a cat in the image?",
            "label": "no",
        },
        {
            "question_id": 3,
            "image": "COCO_val2014_000000000002.jpg",
            "text": "Is there a car in the image?",
            "label": "yes",
        },
        {
            "question_id": 4,
            "image": "COCO_val2014_000000000002.jpg",
            "text": "Is there a bus in the image?",
            "label": "no",
        },
    ]
    adversarial_rows = [
        {
            "question_id": 1,
            "image": "COCO_val2014_000000000001.jpg",
            "text": "Is there a leash in the image?",
            "label": "yes",
        },
        {
            "question_id": 2,
            "image": "COCO_val2014_000000000001.jpg",
            "text": "Is there a bone in the image?",
            "label": "no",
        },
    ]
    write_jsonl(d / "coco_pope_random.json", random_rows)
    write_jsonl(d / "coco_pope_adversarial.json", adversarial_rows)
    return d


@pytest.fixture
def mme_release_dir(tmp_path: Path) -> Path:
    """MME release layout: 'existence' flat, 'artwork' with images/ + questions_answers_YN/."""
    d = tmp_path / "MME_Benchmark_release_version"
    ex = d / "existence"
    ex.mkdir(parents=True)
    for stem, (q1, a1, q2, a2) in {
        "000001": (
            "Is there a dog in this image? Please answer yes or no.",
            "Yes",
            "Is there a cat in this image? Please answer yes or no.",
            "No",
        ),
        "000002": (
            "Is there a car in this image? Please answer yes or no.",
            "Yes",
            "Is there a boat in this image? Please answer yes or no.",
            "No",
        ),
    }.items():
        (ex / f"{stem}.jpg").write_bytes(b"jpg")
        (ex / f"{stem}.txt").write_text(f"{q1}\t{a1}\n{q2}\t{a2}\n", encoding="utf-8")
    art = d / "artwork"
    (art / "images").mkdir(parents=True)
    (art / "questions_answers_YN").mkdir()
    (art / "images" / "10002.jpg").write_bytes(b"jpg")
    (art / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork by Monet? Please answer yes or no.\tYes\n"
        "Is this artwork by Dali? Please answer yes or no.\tNo\n",
        encoding="utf-8",
    )
    code = d / "code_reasoning"
    code.mkdir()
    (code / "0001.png").write_bytes(b"png")
    (code / "0001.txt").write_text(
        "Will the code print 3? Please answer yes or no.\tYes\nWill the code print 4? Please answer yes or no.\tNo\n",
        encoding="utf-8",
    )
    return d
