"""Small benchmarks in the official formats (real images), and a fake generator that records its prompts."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

EVAL_TESTS = Path(__file__).parent.parent / "eval"
if str(EVAL_TESTS) not in sys.path:  # the scorer tests' builders of official-format files
    sys.path.insert(0, str(EVAL_TESTS))

from scoring_builders import MMBENCH_HEADER, b64, mmbench_rows, write_json  # noqa: E402

COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230), (240, 220, 20), (10, 10, 10), (250, 250, 250)]


def png(color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 20), color).save(buffer, format="PNG")
    return buffer.getvalue()


def save_jpg(path: Path, color: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (20, 24), color).save(path, format="JPEG")


@dataclass
class Bench:
    """A benchmark on disk: what ``evaluate`` takes, plus the right answers for an oracle."""

    name: str
    data: Path
    images: Path | None
    truth: dict[Any, str]  # question id -> an answer the scorer counts as right

    @property
    def args(self) -> tuple[str, Path, Path | None]:
        return self.name, self.data, self.images


def make_textvqa(root: Path, n: int = 5) -> Bench:
    images = root / "train_images"
    data, truth = [], {}
    for i in range(n):
        save_jpg(images / f"img{i}.jpg", COLORS[i % len(COLORS)])
        answer = ["red", "green", "blue", "yellow", "black", "white"][i % 6]
        data.append({"question_id": 100 + i, "image_id": f"img{i}", "question": f"What color is item {i}?",
                     "answers": [answer] * 10})
        truth[100 + i] = answer
    return Bench("textvqa", write_json(root / "TextVQA_0.5.1_val.json", {"data": data}), images, truth)


def make_gqa(root: Path) -> Bench:
    images = root / "images"
    questions, truth = {}, {}
    for i, (answer, balanced) in enumerate([("yes", True), ("cup", True), ("no", False), ("blue", True)]):
        save_jpg(images / f"n{i}.jpg", COLORS[i])
        qid = f"20{i}"
        questions[qid] = {"imageId": f"n{i}", "question": f"Question {i}?", "answer": answer, "isBalanced": balanced,
                          "types": {"structural": "query", "semantic": "attr", "detailed": "color"}}
        if balanced:
            truth[qid] = answer
    return Bench("gqa", write_json(root / "testdev_balanced_questions.json", questions), images, truth)


def make_mmbench(root: Path, image_for: Callable[[int], str] | None = None) -> Bench:
    """The scorer tests' circular MMBench rows (7 rows, 2 questions), with real PNGs as the images."""
    rows = mmbench_rows()
    column = MMBENCH_HEADER.index("image")
    for i, row in enumerate(rows):
        if not row[column].strip().isdigit():  # a reference to another row's image stays a reference
            row[column] = image_for(i) if image_for else b64(png(COLORS[i % len(COLORS)]))
    path = root / "MMBench_DEV_EN.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [MMBENCH_HEADER, *rows]) + "\n", encoding="utf-8")
    answer = MMBENCH_HEADER.index("answer")
    return Bench("mmbench", path, None, {int(r[0]): r[answer] for r in rows})


class FakeGenerator:
    """Stands in for ``generate_answers``: records every prompt it is asked, answers from ``truth``."""

    def __init__(self, answer_for: Callable[[str], str] | None = None, fail_after_calls: int | None = None):
        self.answer_for = answer_for or (lambda text: "yes")
        self.fail_after_calls = fail_after_calls
        self.calls: list[list[str]] = []

    def __call__(self, model, processor, prompts, *, batch_size, max_new_tokens, progress):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        texts = [p.messages[0]["content"] for p in prompts]
        assert all(len(p.images) == 1 for p in prompts)
        self.calls.append(texts)
        return [self.answer_for(t) for t in texts]

    @property
    def asked(self) -> list[str]:
        return [t for call in self.calls for t in call]


class GenerationSpy:
    """Wraps the real ``generate_answers``: the model answers, and every prompt and answer is recorded.

    ``fail_after_calls=N`` interrupts the N+1-th batch before it is generated, as a kill would.
    """

    def __init__(self, fail_after_calls: int | None = None):
        from fusevlm.eval.generate import generate_answers

        self.real = generate_answers
        self.fail_after_calls = fail_after_calls
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, model, processor, prompts, **kwargs):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        answers = self.real(model, processor, prompts, **kwargs)
        self.calls.append(([p.messages[0]["content"] for p in prompts], answers))
        return answers

    @property
    def asked(self) -> list[str]:
        return [t for texts, _ in self.calls for t in texts]

    @property
    def answered(self) -> list[str]:
        return [a for _, answers in self.calls for a in answers]


def oracle(*benches: Bench) -> Callable[[str], str]:
    """Prompt text -> the right answer, built from the same question lists ``evaluate`` reads."""
    from fusevlm.eval.scoring import load_questions

    by_prompt = {}
    for bench in benches:
        for q in load_questions(bench.name, bench.data, bench.images):
            by_prompt["<image>\n" + q["prompt"]] = bench.truth.get(q["question_id"], "no idea")
    return lambda text: by_prompt[text]
