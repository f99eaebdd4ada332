"""MMBench / MMBench-CN: choice extraction, CircularEval, splits, submission sheet, prompts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from scoring_builders import MMBENCH_HEADER, mmbench_rows, write_jsonl

from fusevlm.eval.scoring import ScoringError, load_questions, score, write_answers
from fusevlm.eval.scoring.choice import extract_choice

OPTS = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


@pytest.mark.parametrize(
    ("answer", "letter", "how"),
    [
        ("B", "B", "letter"),
        ("B.", "B", "letter"),
        ("(B)", "B", "letter"),
        ("[C]", "C", "letter"),
        ("The answer is B", "B", "letter"),
        ("Answer: D, the fish", "D", "letter"),
        ("A", "A", "letter"),
        ("A. cat", "A", "letter"),
        ("It is a dog.", "B", "text"),
        ("It looks like a FISH", "D", "text"),
        ("b", None, "no-match"),  # letters are case-sensitive and "b" is no option text
        ("A or B", None, "ambiguous"),  # two letters and no option text
        ("B or C, the bird", "C", "text"),  # two letters, one option text
        ("a cat and a dog", None, "ambiguous"),  # two option texts
        ("I cannot tell", None, "no-match"),
        ("Z", "Z", "none-of-the-options"),
        ("Sorry, I can't help with images of people yet.", "Z", "refusal"),
        ("Failed to obtain answer via API. B", None, "no-match"),  # VLMEvalKit skips the letter step
    ],
)
def test_extract_choice(answer: str, letter: str | None, how: str) -> None:
    for article_rule in (False, True):  # none of these has a lone "A" among more than three words
        got = extract_choice(answer, OPTS, article_rule=article_rule)
        assert (got.letter, got.how) == (letter, how)


# The article rule, case by case, as VLMEvalKit v0.2's can_infer_option (vlmeval/utils/matching_util.py) decides:
# `if count == 1: for ch in choices: if 'A' in splits and len(splits) > 3 and verbose: return False; if ch in
# splits: return ch`, then can_infer_text. Expected (default run, VERBOSE set), worked out from that code by hand.
ARTICLE_CASES = [
    # one letter token "A" among 4 words: default -> A; VERBOSE -> the letter step gives up, no option text: none
    ("The answer is A", ("A", "letter"), (None, "no-match")),
    # ... and where an option text is there, it decides
    ("A cat sits on the mat", ("A", "letter"), ("A", "text")),
    ("Answer: A, the cat", ("A", "letter"), ("A", "text")),
    ("A bird, not a fish", ("A", "letter"), (None, "ambiguous")),  # VERBOSE: two option texts
    # three tokens or fewer: the rule does not apply
    ("A is right", ("A", "letter"), ("A", "letter")),
    # a lone "A" token with another letter found: two letters, so the letter step fails either way
    ("A dog, so B", ("B", "text"), ("B", "text")),
    # "a" in lower case is not the token "A": the rule does not look at it
    ("B is a dog here", ("B", "letter"), ("B", "letter")),
    # the rule tests the token "A" whichever letter was found: with options B-D, "A" is no option, D is the one
    # letter found, and VERBOSE still drops it (the option text "fish" then picks D again)
    ("A fish is option D", ("D", "letter"), ("D", "text")),
]


@pytest.mark.parametrize(("answer", "default", "verbose"), ARTICLE_CASES)
def test_the_article_rule_as_vlmevalkit_v02_applies_it(answer: str, default: tuple, verbose: tuple) -> None:
    options = OPTS if "option D" not in answer else {k: v for k, v in OPTS.items() if k != "A"}
    for article_rule, expected in ((False, default), (True, verbose)):
        got = extract_choice(answer, options, article_rule=article_rule)
        assert (got.letter, got.how) == expected, article_rule


def test_score_applies_the_article_rule_only_when_asked(mmbench_file: Path, tmp_path: Path) -> None:
    preds = {1: "The answer is A", 1000001: "D", 2000001: "C", 3000001: "B", 2: "A", 1000002: "C", 2000002: "B"}
    path = _llava_answers(tmp_path, preds)
    official = score("mmbench", mmbench_file, path)
    verbose = score("mmbench", mmbench_file, path, rules="verbose")
    assert (official["rules"], verbose["rules"]) == ("official", "verbose")
    assert official["unresolved"] == []
    assert [(u["question_id"], u["reason"]) for u in verbose["unresolved"]] == [(1, "no-match")]
    assert official["score"] > verbose["score"]
    with pytest.raises(ScoringError, match="unknown rule set 'evalai'"):
        score("mmbench", mmbench_file, path, rules="evalai")


def _llava_answers(tmp_path: Path, preds: dict[int, str], name: str = "answers.jsonl") -> Path:
    rows = [
        {"question_id": k, "round_id": 0, "prompt": "...", "text": v, "answer_id": "x", "model_id": "m"}
        for k, v in preds.items()
    ]
    return write_jsonl(tmp_path / name, rows)


GOOD_Q1 = {1: "A", 1000001: "(D)", 2000001: "The answer is C", 3000001: "It is a cat."}


def test_circular_eval_one_wrong_copy_fails_the_question(mmbench_file: Path, tmp_path: Path) -> None:
    preds = {**GOOD_Q1, 2: "A. red", 1000002: "B", 2000002: "red"}  # 1000002: "B" is blue, answer is C
    r = score("mmbench", mmbench_file, _llava_answers(tmp_path, preds))
    assert r["score"] == pytest.approx(50.0)
    assert (r["n_scored"], r["n_total"], r["n_questions"]) == (7, 7, 2)
    assert r["splits"]["category"]["recognition"]["score"] == pytest.approx(100.0)
    assert r["splits"]["category"]["attribute"]["score"] == pytest.approx(0.0)
    assert r["splits"]["l2-category"]["perception"] == {"score": pytest.approx(50.0), "n_total": 2}
    assert r["unresolved"] == []

    fixed = {**preds, 1000002: "C"}
    assert score("mmbench", mmbench_file, _llava_answers(tmp_path, fixed, "b.jsonl"))[
        "score"
    ] == pytest.approx(100.0)


def test_unresolved_are_listed_and_wrong(mmbench_file: Path, tmp_path: Path) -> None:
    preds = {**GOOD_Q1, 1000001: "A or B", 2: "A", 1000002: "C", 2000002: "I don't know"}
    r = score("mmbench", mmbench_file, _llava_answers(tmp_path, preds))
    assert r["score"] == 0.0
    assert [(u["question_id"], u["reason"]) for u in r["unresolved"]] == [
        (1000001, "ambiguous"),
        (2000002, "no-match"),
    ]


def test_missing_copy_counts_wrong_and_is_reported(mmbench_file: Path, tmp_path: Path) -> None:
    preds = {1: "A", 1000001: "D", 2000001: "C", 2: "A", 1000002: "C", 2000002: "B"}  # 3000001 missing
    path = _llava_answers(tmp_path, preds)
    r = score("mmbench", mmbench_file, path)
    assert r["score"] == pytest.approx(50.0)
    assert (r["n_scored"], r["n_total"], r["missing"]) == (6, 7, [3000001])
    with pytest.raises(ScoringError, match="strict"):
        score("mmbench", mmbench_file, path, strict=True)


def test_submission_sheet_round_trip(mmbench_file: Path, tmp_path: Path) -> None:
    preds = [{"question_id": k, "answer": v} for k, v in {**GOOD_Q1, 2: "A", 1000002: "C"}.items()]
    sheet = write_answers("mmbench", preds, tmp_path / "sub.tsv", data=mmbench_file)
    df = pd.read_csv(sheet, sep="\t")
    assert "image" not in df.columns
    assert list(df.columns) == [c for c in MMBENCH_HEADER if c != "image"] + ["prediction"]
    assert df.loc[df["index"] == 1000001, "prediction"].item() == "(D)"
    assert pd.isna(df.loc[df["index"] == 2000002, "prediction"].item())  # not answered -> empty cell
    r = score("mmbench", mmbench_file, sheet)
    assert r["score"] == pytest.approx(50.0)  # question 2 misses a copy
    assert (r["n_scored"], r["n_total"]) == (6, 7)
    csv = write_answers("mmbench_cn", preds, tmp_path / "sub.csv", data=mmbench_file)
    assert score("mmbench_cn", mmbench_file, csv)["benchmark"] == "mmbench_cn"


def test_mmbench_refuses_foreign_and_malformed(mmbench_file: Path, tmp_path: Path) -> None:
    vqa_like = write_jsonl(tmp_path / "vqa.jsonl", [{"question_id": 1, "answer": "A"}])
    with pytest.raises(ScoringError, match="no field 'text'.*VQAv2/TextVQA answers file"):
        score("mmbench", mmbench_file, vqa_like)
    other_ids = _llava_answers(tmp_path, {555: "A", 556: "B"}, "other.jsonl")
    with pytest.raises(ScoringError, match="belongs to another benchmark"):
        score("mmbench", mmbench_file, other_ids)

    rows = mmbench_rows()
    rows[4][7] = "D"  # answer names an absent option
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join("\t".join(r) for r in [MMBENCH_HEADER, *rows]) + "\n")
    with pytest.raises(ScoringError, match=r"bad\.tsv: row 6 \(index 2\): field 'answer' is 'D'"):
        score("mmbench", bad, _llava_answers(tmp_path, GOOD_Q1))
    test_split = tmp_path / "test.tsv"  # the test TSV has no 'answer' column (index 7)
    test_split.write_text(
        "\n".join("\t".join(r[:7] + r[8:]) for r in [MMBENCH_HEADER, *mmbench_rows()]) + "\n"
    )
    with pytest.raises(ScoringError, match="no column 'answer' \\(test split"):
        score("mmbench", test_split, _llava_answers(tmp_path, GOOD_Q1))


def test_mmbench_prompts(mmbench_file: Path) -> None:
    qs = {q["question_id"]: q for q in load_questions("mmbench", mmbench_file, None)}
    assert len(qs) == 7
    assert qs[1]["prompt"] == (
        "Look closely.\nWhat animal is this?\nA. cat\nB. dog\nC. bird\nD. fish\n"
        "Answer with the option's letter from the given choices directly."
    )
    assert qs[1]["image"] == b"IMAGE-ONE"
    assert qs[3000001]["image"] == b"IMAGE-ONE"  # circular copy refers to row 1's image
    assert qs[3000001]["prompt"].startswith("Look closely.\nWhat animal is this?\nA. fish\nB. cat\n")
    assert qs[2]["prompt"] == (
        "Which color is the car?\nA. red\nB. green\nC. blue\n"
        "Answer with the option's letter from the given choices directly."
    )
    cn = load_questions("mmbench_cn", mmbench_file, None)
    assert cn[0]["prompt"].endswith("\nD. fish\n请直接回答选项字母。")


def test_sheet_keeps_literal_predictions_and_xlsx_twin(
    mmbench_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fusevlm.eval.scoring.mmbench as mmbench

    monkeypatch.setattr(mmbench, "have_openpyxl", lambda: False)
    preds = {**GOOD_Q1, 2: "None", 1000002: "C", 2000002: "B"}
    sheet = write_answers("mmbench", preds, tmp_path / "sub.tsv", data=mmbench_file)
    assert not sheet.with_suffix(".xlsx").exists()
    r = score("mmbench", mmbench_file, sheet)
    # "None" is a prediction (unresolved), not an empty cell
    assert (r["n_scored"], r["n_total"]) == (7, 7)
    assert r["unresolved"] == [{"question_id": 2, "prediction": "None", "reason": "no-match"}]
    assert r["score"] == pytest.approx(50.0)


def test_xlsx_twin_when_openpyxl_is_installed(mmbench_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("openpyxl")
    sheet = write_answers("mmbench", GOOD_Q1, tmp_path / "sub.tsv", data=mmbench_file)
    xlsx = sheet.with_suffix(".xlsx")
    assert xlsx.exists()
    assert score("mmbench", mmbench_file, xlsx)["n_scored"] == 4
