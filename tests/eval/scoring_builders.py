"""Helpers that write tiny benchmark files in the official formats (used by conftest and tests)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures"


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def vqa_answers(*answers: str) -> list[dict[str, Any]]:
    """Ten VQAv2-style answer dicts from (answer, count) shorthand like ``"red*7", "blue*3"``."""
    out = []
    for spec in answers:
        text, _, n = spec.rpartition("*")
        out.extend([text] * int(n))
    assert len(out) == 10, out
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(out)]


def b64(payload: bytes) -> str:
    return base64.b64encode(payload).decode()


MMBENCH_HEADER = [
    "index",
    "question",
    "hint",
    "A",
    "B",
    "C",
    "D",
    "answer",
    "category",
    "l2-category",
    "image",
]


def mmbench_rows() -> list[list[str]]:
    """Two questions with all their circular copies (copies rotate the options)."""
    img1, img2 = b64(b"IMAGE-ONE"), b64(b"IMAGE-TWO")
    return [
        # question 1: four options, answer "cat"; image of copies given by reference to row index 1
        [
            "1",
            "What animal is this?",
            "Look closely.",
            "cat",
            "dog",
            "bird",
            "fish",
            "A",
            "recognition",
            "perception",
            img1,
        ],
        [
            "1000001",
            "What animal is this?",
            "Look closely.",
            "dog",
            "bird",
            "fish",
            "cat",
            "D",
            "recognition",
            "perception",
            "1",
        ],
        [
            "2000001",
            "What animal is this?",
            "Look closely.",
            "bird",
            "fish",
            "cat",
            "dog",
            "C",
            "recognition",
            "perception",
            "1",
        ],
        [
            "3000001",
            "What animal is this?",
            "Look closely.",
            "fish",
            "cat",
            "dog",
            "bird",
            "B",
            "recognition",
            "perception",
            "1",
        ],
        # question 2: three options (D empty), no hint, answer "red"
        [
            "2",
            "Which color is the car?",
            "",
            "red",
            "green",
            "blue",
            "",
            "A",
            "attribute",
            "perception",
            img2,
        ],
        [
            "1000002",
            "Which color is the car?",
            "",
            "green",
            "blue",
            "red",
            "",
            "C",
            "attribute",
            "perception",
            img2,
        ],
        [
            "2000002",
            "Which color is the car?",
            "",
            "blue",
            "red",
            "green",
            "",
            "B",
            "attribute",
            "perception",
            img2,
        ],
    ]
