"""--limit says what it scored; an interrupted run continues from its partial answers file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_run_helpers import Bench, FakeGenerator, oracle

from fusevlm.eval import runner
from fusevlm.eval.runner import EvalError, evaluate

QUESTIONS = [f"<image>\nWhat color is item {i}?\nAnswer the question using a single word or phrase." for i in range(5)]


def test_limit_scores_the_first_n_and_says_so(fake_generate, textvqa: Bench, tmp_path: Path):
    generator = fake_generate(FakeGenerator(oracle(textvqa)))
    out = tmp_path / "out"
    result = evaluate("unused-model", *textvqa.args, out=out, limit=2, progress=False)

    assert generator.asked == QUESTIONS[:2]
    assert (result["n_scored"], result["n_total"], result["limit"]) == (2, 5, 2)
    assert result["score"] == pytest.approx(40.0)  # 2 right of 5: unanswered questions stay in the denominator
    assert [e["question_id"] for e in json.loads((out / "textvqa_answers.json").read_text())] == [100, 101]
    report = (out / "scores.md").read_text()
    assert "2 / 5 (partial)" in report
    assert "scored 2 of 5 questions" in report and "--limit 2" in report


def test_a_killed_run_resumes_with_only_the_missing_questions(
    fake_generate, monkeypatch, textvqa: Bench, tmp_path: Path
):
    out = tmp_path / "out"
    # first run: killed during its second batch, after the first batch (2 answers) was flushed
    fake_generate(FakeGenerator(oracle(textvqa), fail_after_calls=1))
    with pytest.raises(KeyboardInterrupt):
        evaluate("unused-model", *textvqa.args, out=out, batch_size=2, progress=False)
    partial = out / "textvqa.partial.jsonl"
    assert len(partial.read_text().splitlines()) == 1 + 2  # header + the first batch
    assert not (out / "textvqa_answers.json").exists()
    with partial.open("a") as f:  # and a line torn by the kill
        f.write('{"question_id": 102, "ans')

    generator = fake_generate(FakeGenerator(oracle(textvqa)))
    result = evaluate("unused-model", *textvqa.args, out=out, batch_size=2, progress=False)
    assert generator.asked == QUESTIONS[2:]  # only the three without an answer
    assert result["score"] == 100.0 and result["n_scored"] == 5
    lines = [json.loads(line) for line in partial.read_text().splitlines()]
    assert [e["question_id"] for e in lines[1:]] == [100, 101, 102, 103, 104]  # torn line cut, not glued

    # a third run has nothing left to generate: the model is never even loaded
    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although every question has an answer")

    generator = fake_generate(FakeGenerator())
    monkeypatch.setattr(runner, "load_model", no_model)
    again = evaluate("unused-model", *textvqa.args, out=out, batch_size=2, progress=False)
    assert generator.calls == [] and again["score"] == 100.0


def test_resume_keeps_earlier_answers_verbatim(fake_generate, textvqa: Bench, tmp_path: Path):
    out = tmp_path / "out"
    fake_generate(FakeGenerator(lambda text: "first run"))
    evaluate("unused-model", *textvqa.args, out=out, limit=2, progress=False)
    generator = fake_generate(FakeGenerator(lambda text: "second run"))
    evaluate("unused-model", *textvqa.args, out=out, progress=False)
    answers = [e["answer"] for e in json.loads((out / "textvqa_answers.json").read_text())]
    assert answers == ["first run"] * 2 + ["second run"] * 3
    assert len(generator.asked) == 3


def test_a_partial_file_of_another_run_is_refused(fake_generate, textvqa: Bench, gqa: Bench, tmp_path: Path):
    out = tmp_path / "out"
    fake_generate(FakeGenerator())
    evaluate("unused-model", *textvqa.args, out=out, limit=1, max_new_tokens=8, progress=False)
    with pytest.raises(EvalError, match=r"textvqa.partial.jsonl: holds answers of another run \(max_new_tokens=8"):
        evaluate("unused-model", *textvqa.args, out=out, max_new_tokens=16, progress=False)
    with pytest.raises(EvalError, match="holds answers of another run.*model="):
        evaluate("other-model", *textvqa.args, out=out, max_new_tokens=8, progress=False)

    # the same benchmark name but another data file: ids the data does not have
    partial = out / "textvqa.partial.jsonl"
    partial.write_text(partial.read_text() + json.dumps({"question_id": 999, "answer": "x"}) + "\n")
    with pytest.raises(EvalError, match="question id 999 is not in the given textvqa data"):
        evaluate("unused-model", *textvqa.args, out=out, max_new_tokens=8, progress=False)


def test_a_run_resumes_from_the_partial_files_of_another_world_size(fake_generate, textvqa: Bench, tmp_path: Path):
    """Rank files left by an interrupted 2-process run are read by a 1-process rerun (and vice versa)."""
    out = tmp_path / "out"
    header = {"benchmark": "textvqa", "model": str(Path("unused-model").resolve()), "max_new_tokens": 128}
    for rank, qids in [(0, [100, 102]), (1, [101])]:
        partial = runner.PartialAnswers(out, "textvqa", header, runner.Rank(rank, 2))
        with partial.appender() as f:
            partial.write_batch(f, qids, [f"rank {rank}"] * len(qids))
    generator = fake_generate(FakeGenerator(lambda text: "rank 0 of 1"))
    evaluate("unused-model", *textvqa.args, out=out, progress=False)
    assert generator.asked == QUESTIONS[3:]
    answers = [e["answer"] for e in json.loads((out / "textvqa_answers.json").read_text())]
    assert answers == ["rank 0", "rank 1", "rank 0", "rank 0 of 1", "rank 0 of 1"]
