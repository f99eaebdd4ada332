"""VQAv2 / TextVQA / VizWiz accuracy, including the all-answers-agree path and rule-set differences."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scoring_builders import write_json

from fusevlm.eval.scoring import ScoringError, score
from fusevlm.eval.scoring.vqa import leave_one_out_accuracy, vqa_accuracy


@pytest.mark.parametrize(
    ("matches", "expected"), [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)]
)
def test_leave_one_out(matches: int, expected: float) -> None:
    answers = ["x"] * matches + ["other"] * (10 - matches)
    assert leave_one_out_accuracy("x", answers) == pytest.approx(expected)


def test_all_agree_answers_are_compared_verbatim_official() -> None:
    # ten identical human answers are not normalised, the prediction is: "t-shirt" -> "t shirt"
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 10, "official") == 0.0
    # one dissenting answer switches punctuation processing on for the human answers
    assert vqa_accuracy("t-shirt", ["t-shirt"] * 9 + ["shirt"], "official") == pytest.approx(1.0)


def test_official_never_lowercases_or_maps_numbers_in_human_answers() -> None:
    # human answers get the punctuation step only (when they disagree) - "Yes" keeps its capital
    assert vqa_accuracy("Yes", ["Yes"] * 9 + ["no"], "official") == 0.0
    assert vqa_accuracy("two", ["two"] * 9 + ["3"], "official") == 0.0  # prediction becomes "2"
    assert vqa_accuracy("two", ["2"] * 9 + ["3"], "official") == pytest.approx(1.0)


def test_evalai_processes_disagreeing_human_answers_fully() -> None:
    # lmms-eval VQAv2: human answers get punctuation + digit/article steps when they disagree
    assert vqa_accuracy("Yes", ["Yes"] * 9 + ["no"], "evalai") == pytest.approx(1.0)
    # ...but are still compared verbatim when all agree
    assert vqa_accuracy("Yes", ["Yes"] * 10, "evalai") == 0.0
    # M4C TextVQA variant: every human answer is processed
    assert vqa_accuracy("Yes", ["Yes"] * 10, "evalai", textvqa=True) == pytest.approx(1.0)


def test_evalai_comma_and_possessive_differ_from_official() -> None:
    answers = ["red blue"] * 5 + ["purple"] * 5
    assert vqa_accuracy("red,blue", answers, "official") == pytest.approx(1.0)
    assert vqa_accuracy("red,blue", answers, "evalai") == 0.0
    answers = ["dog's"] * 5 + ["cat"] * 5
    assert vqa_accuracy("dog's", answers, "official") == pytest.approx(1.0)
    assert vqa_accuracy("dog's", answers, "evalai") == 0.0


def _answers(tmp_path: Path, rows: list[dict], name: str = "answers.json") -> Path:
    return write_json(tmp_path / name, rows)


def test_vqav2_file_partial(vqav2_dir: Path, tmp_path: Path) -> None:
    ans = _answers(
        tmp_path,
        [
            {"question_id": 1, "answer": "T-shirt"},  # all ten agree on "t-shirt" -> 0
            {"question_id": 2, "answer": "two"},  # -> "2", two of ten humans -> 0.6
            {"question_id": 3, "answer": "Yes."},  # -> "yes", nine of ten -> 1.0
        ],
    )  # question 4 unanswered -> 0
    for data in (vqav2_dir, vqav2_dir / "v2_mscoco_val2014_annotations.json"):
        r = score("vqav2", data, ans)
        assert r["score"] == pytest.approx(40.0)
        assert (r["n_scored"], r["n_total"], r["n_missing"], r["missing"]) == (3, 4, 1, [4])
        at = r["splits"]["answer_type"]
        assert at["yes/no"]["score"] == pytest.approx(100.0)
        assert at["number"]["score"] == pytest.approx(60.0)
        assert at["other"]["score"] == pytest.approx(0.0)
        assert at["other"]["n_total"] == 2
    with pytest.raises(ScoringError, match="1 of 4 questions have no answer"):
        score("vqav2", vqav2_dir, ans, strict=True)


def test_vqav2_full_answers_strict_ok(vqav2_dir: Path, tmp_path: Path) -> None:
    ans = _answers(
        tmp_path,
        [
            {"question_id": 1, "answer": "t-shirt"},
            {"question_id": 2, "answer": "3"},
            {"question_id": 3, "answer": "no"},
            {"question_id": "4", "answer": "the dark red"},  # string ids are accepted; article dropped
        ],
    )
    r = score("vqav2", vqav2_dir, ans, strict=True)
    # q1 0 (verbatim all-agree), q2 1.0 (8 humans), q3 0.3 (1 human), q4 1.0 (5 humans)
    assert r["score"] == pytest.approx(100 * (0 + 1.0 + 0.3 + 1.0) / 4)
    assert r["n_scored"] == r["n_total"] == 4


def test_textvqa_official_vs_evalai(textvqa_file: Path, tmp_path: Path) -> None:
    ans = _answers(tmp_path, [{"question_id": 10, "answer": "Nike"}, {"question_id": 11, "answer": "Stop"}])
    # official: ten identical "Nike" are compared verbatim with the lower-cased prediction -> 0
    assert score("textvqa", textvqa_file, ans)["score"] == pytest.approx(50.0)
    # evalai (M4C): every human answer is processed too -> both right
    r = score("textvqa", textvqa_file, ans, rules="evalai")
    assert r["score"] == pytest.approx(100.0)
    assert r["rules"] == "evalai"


def test_vizwiz_unanswerable_is_an_ordinary_answer(vizwiz_file: Path, tmp_path: Path) -> None:
    ans = _answers(
        tmp_path,
        [
            {"image": "VizWiz_val_00000000.jpg", "answer": "Soup"},  # 4 humans -> 1.0
            {"image": "VizWiz_val_00000001.jpg", "answer": "blue"},  # 2 humans -> 0.6
        ],
    )
    r = score("vizwiz", vizwiz_file, ans)
    assert r["score"] == pytest.approx(80.0)
    assert r["splits"]["answerable"]["answerable"]["score"] == pytest.approx(100.0)
    assert r["splits"]["answerable"]["unanswerable"]["score"] == pytest.approx(60.0)
    assert r["splits"]["answer_type"]["unanswerable"]["score"] == pytest.approx(60.0)
    ans2 = _answers(
        tmp_path,
        [
            {"image": "VizWiz_val_00000000.jpg", "answer": "unanswerable"},
            {"image": "VizWiz_val_00000001.jpg", "answer": "Unanswerable"},
        ],
        "ans2.json",
    )
    r2 = score("vizwiz", vizwiz_file, ans2)
    assert r2["score"] == pytest.approx(50.0)


def test_foreign_answers_file_is_refused(vqav2_dir: Path, vizwiz_file: Path, tmp_path: Path) -> None:
    gqa_style = _answers(tmp_path, [{"questionId": "201", "prediction": "yes"}], "gqa.json")
    with pytest.raises(ScoringError, match="GQA answers file"):
        score("vqav2", vqav2_dir, gqa_style)
    other_split = _answers(tmp_path, [{"question_id": 9001, "answer": "yes"}], "test.json")
    with pytest.raises(ScoringError, match="belongs to another benchmark or split"):
        score("vqav2", vqav2_dir, other_split)
    some_unknown = _answers(
        tmp_path, [{"question_id": 1, "answer": "x"}, {"question_id": 77, "answer": "y"}], "mix.json"
    )
    with pytest.raises(ScoringError, match=r"77 \(line"):
        score("vqav2", vqav2_dir, some_unknown)
    vqa_style = _answers(tmp_path, [{"question_id": 1, "answer": "x"}], "vqa.json")
    with pytest.raises(ScoringError, match="no field 'image'"):
        score("vizwiz", vizwiz_file, vqa_style)
    # a data file passed as answers
    with pytest.raises(ScoringError, match="benchmark data file rather than an answers file"):
        score("vqav2", vqav2_dir, vqav2_dir / "v2_mscoco_val2014_annotations.json")


def test_malformed_answers_name_file_line_and_field(vqav2_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[\n {"question_id": 1, "answer": "a"},\n {"question_id": 2 "answer": "b"}\n]\n')
    with pytest.raises(ScoringError, match=r"bad\.json: line 3, column \d+: malformed JSON"):
        score("vqav2", vqav2_dir, bad)
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"question_id": 1, "answer": "a"}\n\n{"question_id": 2, "answer": }\n')
    with pytest.raises(ScoringError, match=r"bad\.jsonl: line 3, column \d+: malformed JSON"):
        score("vqav2", vqav2_dir, bad_jsonl)
    wrong_type = tmp_path / "wrong.json"
    wrong_type.write_text('[\n {"question_id": 1, "answer": "a"},\n\n {"question_id": 2, "answer": 5}\n]')
    with pytest.raises(ScoringError, match=r"wrong\.json: line 4: field 'answer' must be a string"):
        score("vqav2", vqav2_dir, wrong_type)
    dup = _answers(
        tmp_path, [{"question_id": 1, "answer": "a"}, {"question_id": 1, "answer": "b"}], "dup.json"
    )
    with pytest.raises(ScoringError, match="duplicate answer"):
        score("vqav2", vqav2_dir, dup)


def test_malformed_data_file(tmp_path: Path) -> None:
    ann = tmp_path / "v2_mscoco_val2014_annotations.json"
    ann.write_text(json.dumps({"annotations": [{"question_id": 1, "answers": [{"answer": 3}]}]}))
    ans = _answers(tmp_path, [{"question_id": 1, "answer": "3"}])
    with pytest.raises(ScoringError, match=r"annotations\[0\]: answers\[0\]"):
        score("vqav2", ann, ans)
    broken = tmp_path / "TextVQA_0.5.1_val.json"
    broken.write_text('{"data": [\n {"question_id": 1,,}\n]}')
    with pytest.raises(ScoringError, match=r"TextVQA_0\.5\.1_val\.json: line 2"):
        score("textvqa", broken, ans)
    with pytest.raises(ScoringError, match="file not found"):
        score("textvqa", tmp_path / "nope.json", ans)


def test_vqav2_files_of_the_same_split_are_paired(vqav2_dir: Path, tmp_path: Path) -> None:
    from fusevlm.eval.scoring.vqa import find_vqav2_files

    write_json(vqav2_dir / "v2_OpenEnded_mscoco_train2014_questions.json", {"questions": []})
    write_json(vqav2_dir / "v2_mscoco_train2014_annotations.json", {"annotations": []})
    q, a = find_vqav2_files(vqav2_dir / "v2_mscoco_val2014_annotations.json")
    assert q == vqav2_dir / "v2_OpenEnded_mscoco_val2014_questions.json"
    assert a == vqav2_dir / "v2_mscoco_val2014_annotations.json"
    with pytest.raises(ScoringError, match="several VQAv2 questions files"):
        find_vqav2_files(vqav2_dir)
