"""MME: yes/no parsing, acc and acc+ per subtask, perception/cognition totals, both data layouts."""

from __future__ import annotations

from pathlib import Path

import pytest
from scoring_builders import FIXTURES, write_jsonl

from fusevlm.eval.scoring import ScoringError, load_questions, score, write_answers
from fusevlm.eval.scoring.mme import parse_prediction


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("Yes", "yes"),
        ("NO", "no"),
        ("yesterday", "yes"),  # "yes" in the first four characters
        ("No, it is not.", "no"),
        ("Not at all", "no"),
        (" yes", "yes"),
        ("  yes", "other"),  # not stripped: the first four characters are "  ye"
        ("The answer is yes", "other"),
        ("none", "no"),
    ],
)
def test_parse_prediction(text: str, label: str) -> None:
    assert parse_prediction(text) == label


def test_mme_acc_plus_and_totals(mme_release_dir: Path, tmp_path: Path) -> None:
    ans = write_jsonl(
        tmp_path / "mme.jsonl",
        [
            {"question_id": "existence/000001.jpg/0", "text": "Yes"},
            {"question_id": "existence/000001.jpg/1", "text": "No, there is not."},
            {"question_id": "existence/000002.jpg/0", "text": "yes"},
            {"question_id": "existence/000002.jpg/1", "text": "There is a boat"},  # other -> wrong
            {"question_id": "artwork/10002.jpg/0", "text": " yes"},
            {"question_id": "artwork/10002.jpg/1", "text": "Not at all"},
            {"question_id": "code_reasoning/0001.png/0", "text": "no"},  # wrong
        ],
    )  # code_reasoning/0001.png/1 unanswered
    r = score("mme", mme_release_dir, ans)
    sub = r["splits"]["subtask"]
    assert sub["existence"]["acc"] == pytest.approx(75.0)
    assert sub["existence"]["acc_plus"] == pytest.approx(50.0)  # image 000002 has one wrong answer
    assert sub["existence"]["score"] == pytest.approx(125.0)
    assert sub["artwork"]["score"] == pytest.approx(200.0)
    assert sub["code_reasoning"]["score"] == pytest.approx(0.0)
    assert r["score"] == pytest.approx(325.0)  # perception total = existence + artwork
    assert r["splits"]["perception"]["score"] == pytest.approx(325.0)
    assert r["cognition_score"] == pytest.approx(0.0)
    assert (r["n_scored"], r["n_total"]) == (7, 8)
    assert [u["question_id"] for u in r["unresolved"]] == ["existence/000002.jpg/1"]
    assert "count" in r["subtasks_absent"]


def test_mme_template_layout_and_results_folder_round_trip(tmp_path: Path) -> None:
    data = FIXTURES / "mme_template"
    qs = load_questions("mme", data, tmp_path / "images")
    assert [q["question_id"] for q in qs][:2] == [
        "existence/000000006040.jpg/0",
        "existence/000000006040.jpg/1",
    ]
    assert (
        qs[0]["prompt"]
        == "Is there a train in this image?\nAnswer the question using a single word or phrase."
    )
    assert qs[0]["image"] == tmp_path / "images" / "existence" / "000000006040.jpg"
    answers = {q["question_id"]: "Yes" for q in qs}  # always "yes": every first question right
    out = write_answers("mme", answers, tmp_path / "results", data=data)
    lines = (out / "existence.txt").read_text().splitlines()
    assert lines[1] == "000000006040.jpg\tIs there a bed in this image? Please answer yes or no.\tNo\tYes"
    r = score("mme", data, out)
    for task in ("existence", "color"):
        assert r["splits"]["subtask"][task]["acc"] == pytest.approx(50.0)
        assert r["splits"]["subtask"][task]["acc_plus"] == pytest.approx(0.0)
    assert r["score"] == pytest.approx(100.0)
    assert r["splits"]["cognition"]["score"] == 0.0


def test_mme_malformed(tmp_path: Path) -> None:
    d = tmp_path / "mme"
    d.mkdir()
    (d / "count.txt").write_text("a.jpg\tq1\tYes\na.jpg\tq2\tNo\na.jpg\tq3\tYes\n")
    ans = write_jsonl(tmp_path / "a.jsonl", [{"question_id": "count/a.jpg/0", "text": "yes"}])
    with pytest.raises(ScoringError, match=r"count\.txt: line 3: image 'a\.jpg' has more than two"):
        score("mme", d, ans)
    (d / "count.txt").write_text("a.jpg\tq1\tMaybe\na.jpg\tq2\tNo\n")
    with pytest.raises(ScoringError, match=r"count\.txt: line 1: answer field must be 'yes' or 'no'"):
        score("mme", d, ans)
    (d / "count.txt").write_text("a.jpg\tq1\n")
    with pytest.raises(ScoringError, match=r"count\.txt: line 1: expected 3 tab-separated fields"):
        score("mme", d, ans)
