"""GQA, ScienceQA-IMG and POPE scorers."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring_builders import write_json, write_jsonl

from fusevlm.eval.scoring import ScoringError, score
from fusevlm.eval.scoring.gqa import postprocess_prediction
from fusevlm.eval.scoring.pope import parse_yes_no
from fusevlm.eval.scoring.scienceqa import extract_letter

# ------------------------------------------------------------------------------------------- GQA


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("Yes.", "yes"), ("Table", "table"), (" cup.. ", "cup"), ("a cup", "a cup"), ("3.5", "3.5")],
)
def test_gqa_postprocess(raw: str, expected: str) -> None:
    assert postprocess_prediction(raw) == expected


def test_gqa_exact_match_on_balanced_questions(gqa_file: Path, tmp_path: Path) -> None:
    ans = write_json(
        tmp_path / "gqa_answers.json",
        [
            {"questionId": "201", "prediction": "Yes."},  # -> "yes": right
            {"questionId": "202", "prediction": "A cup"},  # -> "a cup": no article removal, wrong
            {"questionId": 203, "prediction": "Blue"},  # integer id accepted; -> "blue": right
            {"questionId": "204", "prediction": "no"},  # unbalanced question: accepted, not scored
        ],
    )
    r = score("gqa", gqa_file, ans)
    assert r["score"] == pytest.approx(200 / 3)
    assert (r["n_scored"], r["n_total"]) == (3, 3)
    assert r["splits"]["answer_type"]["binary"] == {"score": pytest.approx(100.0), "n_total": 1}
    assert r["splits"]["answer_type"]["open"] == {"score": pytest.approx(50.0), "n_total": 2}
    assert r["splits"]["semantic"]["attr"]["score"] == pytest.approx(100.0)
    assert r["splits"]["structural"]["query"]["n_total"] == 2


def test_gqa_partial_and_foreign(gqa_file: Path, tmp_path: Path) -> None:
    partial = write_json(tmp_path / "p.json", [{"questionId": "201", "prediction": "yes"}])
    r = score("gqa", gqa_file, partial)
    assert (r["n_scored"], r["n_total"], r["score"]) == (1, 3, pytest.approx(100 / 3))
    assert r["missing"] == ["202", "203"]
    vqa_style = write_json(tmp_path / "v.json", [{"question_id": 201, "answer": "yes"}])
    with pytest.raises(ScoringError, match="no field 'questionId'.*VQAv2/TextVQA answers file"):
        score("gqa", gqa_file, vqa_style)
    with pytest.raises(ScoringError, match="unknown rule set 'evalai'"):
        score("gqa", gqa_file, partial, rules="evalai")


# ------------------------------------------------------------------------------------- ScienceQA


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("B", "B"),
        (" B\n", "B"),
        ("E", "E"),
        ("C. hat", "C"),
        ("C.hat", None),  # needs ". " after the letter
        ("The answer is A.", "A"),
        ("Because ... The answer is D!", "D"),
        ("The answer is A", None),  # the pattern wants one character after the letter
        ("The answer is B. The answer is A.", None),  # two matches
        ("b", None),
        ("(A)", None),
    ],
)
def test_scienceqa_extract_letter(text: str, letter: str | None) -> None:
    assert extract_letter(text) == letter


def test_scienceqa_img(scienceqa_dir: Path, tmp_path: Path) -> None:
    ans = write_jsonl(
        tmp_path / "sqa.jsonl",
        [
            {"question_id": "1", "prompt": "...", "text": "B"},  # whale: right
            {"question_id": "2", "prompt": "...", "text": "C. hat"},  # right
            {"question_id": "3", "prompt": "...", "text": "The answer is A."},  # right
            {"question_id": "4", "prompt": "...", "text": "The answer is A"},  # unresolved -> wrong
            {"question_id": "5", "prompt": "...", "text": "A"},  # test question without image: ignored
        ],
    )
    r = score("scienceqa", scienceqa_dir, ans)
    assert r["score"] == pytest.approx(75.0)
    assert (r["n_scored"], r["n_total"]) == (4, 4)
    assert [u["question_id"] for u in r["unresolved"]] == ["4"]
    assert r["splits"]["subject"]["social science"] == {"score": pytest.approx(50.0), "n_total": 2}
    # a letter beyond the choices is wrong (not unresolved); problems.json path works too
    ans2 = write_jsonl(
        tmp_path / "sqa2.jsonl", [{"question_id": "1", "text": "C"}, {"question_id": "3", "text": "A"}]
    )
    r2 = score("scienceqa", scienceqa_dir / "problems.json", ans2)
    assert r2["score"] == pytest.approx(25.0)
    assert r2["unresolved"] == []
    assert (r2["n_scored"], r2["n_missing"]) == (2, 2)


def test_scienceqa_refuses_train_ids(scienceqa_dir: Path, tmp_path: Path) -> None:
    ans = write_jsonl(
        tmp_path / "sqa.jsonl", [{"question_id": "1", "text": "B"}, {"question_id": "6", "text": "A"}]
    )
    with pytest.raises(ScoringError, match="'6' \\(line 2\\)"):
        score("scienceqa", scienceqa_dir, ans)


# ------------------------------------------------------------------------------------------ POPE


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes, there is a dog.", "yes"),
        ("No.", "no"),
        ("no, ", "no"),
        ("I do not think so", "no"),
        ("There is no cat", "no"),
        ("Yes. No dogs here.", "yes"),  # only the first sentence counts
        ("NO", "yes"),  # only "No", "no" and "not" mean no
        ("Not really", "yes"),
        ("yes,no", "yes"),  # comma deleted -> "yesno"
        ("", "yes"),
    ],
)
def test_pope_parse(text: str, label: str) -> None:
    assert parse_yes_no(text) == label


def test_pope_metrics_per_split(pope_dir: Path, tmp_path: Path) -> None:
    ans = write_jsonl(
        tmp_path / "pope.jsonl",
        [
            {"question_id": "random/1", "text": "Yes, there is a dog."},  # TP
            {"question_id": "random/2", "text": "No, there is no cat."},  # TN
            {"question_id": "random/3", "text": "There is not a car in the image."},  # FN
            {"question_id": "random/4", "text": "NO"},  # parsed yes -> FP
            {"question_id": "adversarial/1", "text": "Yes"},  # TP
        ],
    )  # adversarial/2 (label no) unanswered -> counted wrong (FP)
    r = score("pope", pope_dir, ans)
    rnd, adv = r["splits"]["random"], r["splits"]["adversarial"]
    assert (rnd["tp"], rnd["tn"], rnd["fp"], rnd["fn"]) == (1, 1, 1, 1)
    for key in ("accuracy", "precision", "recall", "f1", "yes_ratio"):
        assert rnd[key] == pytest.approx(50.0)
    assert adv["accuracy"] == pytest.approx(50.0)
    assert adv["precision"] == pytest.approx(50.0)
    assert adv["recall"] == pytest.approx(100.0)
    assert adv["f1"] == pytest.approx(200 / 3)
    assert adv["yes_ratio"] == pytest.approx(100.0)
    assert r["score"] == pytest.approx((50.0 + 200 / 3) / 2)
    assert (r["n_scored"], r["n_total"], r["missing"]) == (5, 6, ["adversarial/2"])


def test_pope_single_file_and_foreign_ids(tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "llava_pope_test.jsonl",
        [
            {
                "question_id": 100,
                "image": "a.jpg",
                "text": "Is there a cat?",
                "label": "yes",
                "category": "popular",
            },
            {
                "question_id": 101,
                "image": "a.jpg",
                "text": "Is there a dog?",
                "label": "no",
                "category": "popular",
            },
        ],
    )
    ans = write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 100, "text": "Yes"}, {"question_id": 101, "text": "No"}]
    )
    r = score("pope", data, ans, strict=True)
    assert r["score"] == pytest.approx(100.0)
    assert list(r["splits"]) == ["popular"]
    # an unanswered "yes" question counts as a wrong "no" (a false negative)
    only_no = write_jsonl(tmp_path / "n.jsonl", [{"question_id": 101, "text": "No"}])
    r = score("pope", data, only_no)["splits"]["popular"]
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (0, 0, 1, 1)
    assert (r["accuracy"], r["precision"], r["recall"], r["f1"], r["yes_ratio"]) == (50.0, 0.0, 0.0, 0.0, 0.0)
    foreign = write_jsonl(tmp_path / "f.jsonl", [{"question_id": 1, "text": "Yes"}])
    with pytest.raises(ScoringError, match="belongs to another benchmark or split"):
        score("pope", data, foreign)
    bad = tmp_path / "bad_labels.jsonl"
    bad.write_text(
        '{"question_id": 1, "image": "a.jpg", "text": "q", "label": "maybe", "category": "random"}\n'
    )
    with pytest.raises(ScoringError, match=r"bad_labels\.jsonl: line 1: field 'label'"):
        score("pope", bad, ans)
