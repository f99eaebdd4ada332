"""VQA answer normalisation: every rule of the GT-Vision-Lab and EvalAI processors."""

from __future__ import annotations

import pytest

from fusevlm.eval.scoring.normalize import (
    CONTRACTIONS,
    evalai_normalize,
    normalize_answer,
    official_normalize,
    process_digit_article,
    process_punctuation,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("t-shirt", "t shirt"),  # punctuation not touching a space -> replaced by a space
        ("t - shirt", "t  shirt"),  # touching a space -> deleted (double space stays at this step)
        ("hello!", "hello "),
        ("(hello)", " hello "),
        ("red, blue", "red blue"),  # ", " touches a space -> every comma deleted
        ("1,000", "1000"),  # comma between digits -> all punctuation deleted, not spaced
        ("1,000 (approx)", "1000 approx"),
        ("yes.", "yes"),  # period not followed by a digit -> removed
        ("3.5", "3.5"),  # period followed by a digit survives
        ("a.m.", "am"),
        ("don't", "don't"),  # apostrophe is not punctuation here
        ("10:30", "10:30"),  # nor is the colon
    ],
)
def test_process_punctuation_official(raw: str, expected: str) -> None:
    assert process_punctuation(raw, "official") == expected


def test_period_strip_removes_at_most_32_periods() -> None:
    # the reference passes re.UNICODE (32) as re.sub's count
    out = process_punctuation("." * 40 + "x", "official")
    assert out == "." * 8 + "x"


def test_comma_rule_variants_differ() -> None:
    # evalai detects ",+" between digits (so "1,,2" counts), official needs exactly one comma
    assert process_punctuation("1,,2-3", "evalai") == "123"
    assert process_punctuation("1,,2-3", "official") == "1  2 3"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two", "2"),
        ("none", "0"),
        ("ten dogs", "10 dogs"),
        ("eleven", "eleven"),  # only zero..ten (and none) are mapped
        ("The red car", "red car"),
        ("a", ""),
        ("an apple", "apple"),
        ("dont", "don't"),
        ("Wont", "won't"),
        ("yall'll", "y'all'll"),
        ("somebody'd", "somebodyd"),  # the one entry of the table that maps the other way round
        ("Im", "im"),  # capitalised keys of the reference table never apply after lower-casing
        ("  spaced   out  ", "spaced out"),
    ],
)
def test_process_digit_article(raw: str, expected: str) -> None:
    assert process_digit_article(raw) == expected


def test_contraction_table_size_and_samples() -> None:
    assert len(CONTRACTIONS) == 116  # 120 reference entries minus 4 unreachable capitalised keys
    assert CONTRACTIONS["couldnt've"] == "couldn't've"
    assert CONTRACTIONS["'ows'at"] == "'ow's'at"
    assert CONTRACTIONS["twas"] == "'twas"


@pytest.mark.parametrize(
    ("raw", "official", "evalai"),
    [
        ("Two dogs.", "2 dogs", "2 dogs"),
        ("red,blue", "red blue", "redblue"),  # evalai deletes commas before the punctuation step
        ("dog's bowl", "dog's bowl", "dog 's bowl"),  # evalai splits the possessive 's
        ("What?", "what", "what"),
        ("  Yes\n", "yes", "yes"),
        ("the t-shirt", "t shirt", "t shirt"),
        ("1,000", "1000", "1000"),
    ],
)
def test_official_vs_evalai(raw: str, official: str, evalai: str) -> None:
    assert official_normalize(raw) == official
    assert evalai_normalize(raw) == evalai
    assert normalize_answer(raw, "official") == official
    assert normalize_answer(raw, "evalai") == evalai


def test_unknown_rule_set() -> None:
    with pytest.raises(ValueError, match="unknown VQA rule set"):
        normalize_answer("x", "vqa2017")
