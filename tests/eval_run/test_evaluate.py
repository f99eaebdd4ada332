"""End to end: a tiny model answers TextVQA, GQA and MMBench files; answers files in the official formats."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from eval_run_helpers import Bench, FakeGenerator, oracle

from fusevlm.eval.generate import generate_answers
from fusevlm.eval.runner import evaluate, load_model, make_prompt
from fusevlm.eval.scoring import load_questions

FAST = dict(batch_size=2, max_new_tokens=3, progress=False)


def asked_directly(model_dir: Path, bench: Bench) -> dict:
    """What the model answers when asked one question at a time, the LLaVA way ("<image>\\n" + prompt)."""
    model, processor = load_model(model_dir)
    answers = {}
    for q in load_questions(*bench.args):
        prompt = make_prompt(q["prompt"], q["image"], processor.image_token)
        answers[q["question_id"]] = generate_answers(model, processor, [prompt], max_new_tokens=3, progress=False)[0]
    return answers


def test_textvqa_with_the_model_writes_the_evalai_file_and_scores(tiny_model: Path, textvqa: Bench, tmp_path: Path):
    out = tmp_path / "out"
    result = evaluate(tiny_model, *textvqa.args, out=out, **FAST)

    entries = json.loads((out / "textvqa_answers.json").read_text())
    assert [set(e) for e in entries] == [{"question_id", "answer"}] * 5
    assert [e["question_id"] for e in entries] == [100, 101, 102, 103, 104]  # the data file's order
    # batched (2 per batch, left-padded) answers are the answers to each question asked alone
    direct = asked_directly(tiny_model, textvqa)
    assert {e["question_id"]: e["answer"] for e in entries} == {k: v.strip() for k, v in direct.items()}

    assert (result["benchmark"], result["n_scored"], result["n_total"]) == ("textvqa", 5, 5)
    assert json.loads((out / "scores.json").read_text())["score"] == result["score"]
    report = (out / "scores.md").read_text()
    assert "| textvqa |" in report and "scored 5 of 5 questions" in report and "partial" not in report


def test_gqa_with_the_model_writes_question_id_prediction_pairs(tiny_model: Path, gqa: Bench, tmp_path: Path):
    out = tmp_path / "out"
    result = evaluate(tiny_model, *gqa.args, out=out, **FAST)
    entries = json.loads((out / "gqa_answers.json").read_text())
    assert [e["questionId"] for e in entries] == ["200", "201", "203"]  # balanced questions only, in order
    assert all(set(e) == {"questionId", "prediction"} and isinstance(e["prediction"], str) for e in entries)
    assert (result["n_scored"], result["n_total"]) == (3, 3)


def test_mmbench_with_the_model_writes_the_submission_sheet(tiny_model: Path, mmbench: Bench, tmp_path: Path):
    out = tmp_path / "out"
    result = evaluate(tiny_model, *mmbench.args, out=out, **FAST)
    sheet = pd.read_csv(out / "mmbench_submission.tsv", sep="\t", keep_default_na=False)
    assert list(sheet["index"]) == [1, 1000001, 2000001, 3000001, 2, 1000002, 2000002]
    assert "prediction" in sheet.columns and "image" not in sheet.columns
    assert result["n_total"] == 7 and result["n_asked"] == 7
    assert result["n_scored"] == sum(1 for p in sheet["prediction"] if str(p).strip())


@pytest.mark.parametrize("name", ["textvqa", "gqa", "mmbench"])
def test_right_answers_score_100_through_batches(name, request, fake_generate, tmp_path: Path):
    """Answers reach the right question ids: an oracle generator, batches of 2, scores 100."""
    bench = request.getfixturevalue(name)
    generator = fake_generate(FakeGenerator(oracle(bench)))
    result = evaluate("unused-model", *bench.args, out=tmp_path / "out", batch_size=2, progress=False)
    assert result["score"] == 100.0
    assert result["n_scored"] == result["n_total"] == len(bench.truth)
    assert [len(call) for call in generator.calls][0] == 2


def test_evaluate_asks_the_llava_prompt_with_the_image_first(fake_generate, textvqa: Bench, tmp_path: Path):
    generator = fake_generate(FakeGenerator())
    evaluate("unused-model", *textvqa.args, out=tmp_path / "out", batch_size=16, progress=False)
    assert generator.asked[0] == (
        "<image>\nWhat color is item 0?\nAnswer the question using a single word or phrase."
    )
    assert len(generator.calls) == 1 and len(generator.asked) == 5
