"""--limit says what it scored; an interrupted run continues from its partial answers file. The tiny real model
answers (it is cheap); a spy around the real generation records what was asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_run_helpers import Bench, GenerationSpy

from fusevlm.eval import runner
from fusevlm.eval.runner import EvalError, evaluate

QUESTIONS = [f"<image>\nWhat color is item {i}?\nAnswer the question using a single word or phrase." for i in range(5)]
NEW_TOKENS = 4


def answers_file(out: Path) -> list[dict]:
    return json.loads((out / "textvqa_answers.json").read_text())


@pytest.fixture
def uninterrupted(tiny_model: Path, textvqa: Bench, tmp_path: Path) -> list[str]:
    """The answers of one run that was never interrupted, in question order."""
    out = tmp_path / "whole"
    evaluate(tiny_model, *textvqa.args, out=out, batch_size=2, max_new_tokens=NEW_TOKENS, progress=False)
    answers = [e["answer"] for e in answers_file(out)]
    assert len(answers) == 5 and any(answers)  # the untrained model says something
    return answers


def test_limit_scores_the_first_n_and_says_so(spy_generate, tiny_model, textvqa: Bench, tmp_path: Path, uninterrupted):
    spy = spy_generate(GenerationSpy())
    out = tmp_path / "out"
    result = evaluate(tiny_model, *textvqa.args, out=out, limit=2, max_new_tokens=NEW_TOKENS, progress=False)

    assert spy.asked == QUESTIONS[:2]
    assert (result["n_scored"], result["n_total"], result["limit"]) == (2, 5, 2)
    assert [(e["question_id"], e["answer"]) for e in answers_file(out)] == [(100, uninterrupted[0]),
                                                                            (101, uninterrupted[1])]
    report = (out / "scores.md").read_text()
    assert "2 / 5 (partial)" in report
    assert "scored 2 of 5 questions" in report and "--limit 2" in report


def test_a_killed_run_resumes_with_only_the_missing_questions(
    spy_generate, monkeypatch, tiny_model, textvqa: Bench, tmp_path: Path, uninterrupted
):
    out = tmp_path / "out"
    common = dict(out=out, batch_size=2, max_new_tokens=NEW_TOKENS, progress=False)
    # first run: killed during its second batch, after the first batch (2 answers) was flushed
    spy_generate(GenerationSpy(fail_after_calls=1))
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny_model, *textvqa.args, **common)
    partial = out / "textvqa.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 2  # header + the first batch
    assert not (out / "textvqa_answers.json").exists()
    with partial.open("a") as f:  # and a line torn by the kill
        f.write('{"question_id": 102, "ans')

    spy = spy_generate(GenerationSpy())
    result = evaluate(tiny_model, *textvqa.args, **common)
    assert spy.asked == QUESTIONS[2:]  # only the three without an answer
    assert [e["answer"] for e in answers_file(out)] == uninterrupted  # as if never interrupted
    assert result["n_scored"] == 5
    lines = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [e["question_id"] for e in lines[1:]] == [100, 101, 102, 103, 104]  # torn line cut, not glued

    # a third run has nothing left to generate: the model is never even loaded
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every question has an answer")

    spy = spy_generate(GenerationSpy())
    monkeypatch.setattr(runner, "load_model", no_model)
    again = evaluate(tiny_model, *textvqa.args, **common)
    assert spy.calls == [] and again["score"] == result["score"]


def test_resume_keeps_earlier_answers_verbatim(spy_generate, tiny_model, textvqa: Bench, tmp_path: Path, uninterrupted):
    out = tmp_path / "out"
    common = dict(out=out, max_new_tokens=NEW_TOKENS, progress=False)
    evaluate(tiny_model, *textvqa.args, limit=2, **common)
    partial = out / "textvqa.partial.jsonl"
    header, *lines = partial.read_text().splitlines()
    edited = [json.dumps({**json.loads(line), "answer": "from the first run"}) for line in lines]
    partial.write_text("\n".join([header, *edited]) + "\n")  # what the model would not say again

    spy = spy_generate(GenerationSpy())
    evaluate(tiny_model, *textvqa.args, **common)
    assert [e["answer"] for e in answers_file(out)] == ["from the first run"] * 2 + uninterrupted[2:]
    assert spy.asked == QUESTIONS[2:]


def test_a_partial_file_of_another_run_is_refused(tiny_model, textvqa: Bench, tmp_path: Path):
    out = tmp_path / "out"
    evaluate(tiny_model, *textvqa.args, out=out, limit=1, max_new_tokens=8, progress=False)
    with pytest.raises(EvalError, match=r"textvqa.partial.jsonl: holds answers of another run \(max_new_tokens=8"):
        evaluate(tiny_model, *textvqa.args, out=out, max_new_tokens=16, progress=False)
    with pytest.raises(EvalError, match="holds answers of another run.*model="):
        evaluate(tmp_path / "other-model", *textvqa.args, out=out, max_new_tokens=8, progress=False)

    # the same benchmark name but another data file: ids the data does not have
    partial = out / "textvqa.partial.jsonl"
    partial.write_text(partial.read_text() + json.dumps({"question_id": 999, "answer": "x"}) + "\n")
    with pytest.raises(EvalError, match="question id 999 is not in the given textvqa data"):
        evaluate(tiny_model, *textvqa.args, out=out, max_new_tokens=8, progress=False)


def test_a_run_resumes_from_the_partial_files_of_another_world_size(spy_generate, tiny_model, textvqa: Bench,
                                                                   tmp_path: Path, uninterrupted):
    """Rank files left by an interrupted 2-process run are read by a 1-process rerun (and vice versa)."""
    out = tmp_path / "out"
    header = {"benchmark": "textvqa", "model": str(Path(tiny_model).resolve()), "max_new_tokens": NEW_TOKENS}
    for rank, qids in [(0, [100, 102]), (1, [101])]:
        partial = runner.PartialAnswers(out, "textvqa", header, runner.Rank(rank, 2))
        with partial.appender() as f:
            partial.write_batch(f, qids, [f"rank {rank}"] * len(qids))
    spy = spy_generate(GenerationSpy())
    evaluate(tiny_model, *textvqa.args, out=out, max_new_tokens=NEW_TOKENS, progress=False)
    assert spy.asked == QUESTIONS[3:]
    answers = [e["answer"] for e in answers_file(out)]
    assert answers == ["rank 0", "rank 1", "rank 0", *uninterrupted[3:]]
