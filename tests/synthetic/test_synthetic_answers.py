"""answers_match: normalised exact match, exact boxes for grounding."""

import pytest

from fusevlm.data.synthetic import answers_match, normalize_answer, parse_box


@pytest.mark.parametrize(
    ("task", "prediction", "reference"),
    [
        ("color", "red", "red"),
        ("color", " Red. ", "red"),
        ("position", "Top   Left", "top left"),
        ("position", "top left.", "top left"),
        ("region", "a red circle", "red circle"),
        ("caption", "A red circle and an orange star.", "a red circle and an orange star"),
        ("count", "2", "2"),
        ("ocr", "CAT", "cat"),
        ("grounding", "[1, 2, 4, 5]", "[1, 2, 4, 5]"),
        ("grounding", " [1,2,4,5]. ", "[1, 2, 4, 5]"),
    ],
)
def test_matches(task, prediction, reference):
    assert answers_match(task, prediction, reference)


@pytest.mark.parametrize(
    ("task", "prediction", "reference"),
    [
        ("color", "reddish", "red"),
        ("color", "red blue", "red"),
        ("color", "", "red"),
        ("position", "top", "top left"),
        ("region", "red square", "red circle"),
        ("count", "two", "2"),
        ("count", "12", "2"),
        ("ocr", "cats", "cat"),
        ("grounding", "[1, 2, 4, 6]", "[1, 2, 4, 5]"),
        ("grounding", "1, 2, 4, 5", "[1, 2, 4, 5]"),
        ("grounding", "[1, 2, 4, 5] [0, 0, 3, 3]", "[1, 2, 4, 5]"),
        ("grounding", "[1, 2, 4]", "[1, 2, 4, 5]"),
        ("grounding", "", "[1, 2, 4, 5]"),
    ],
)
def test_mismatches(task, prediction, reference):
    assert not answers_match(task, prediction, reference)


def test_grounding_reference_without_box_is_an_error():
    with pytest.raises(ValueError, match="no box"):
        answers_match("grounding", "[1, 2, 3, 4]", "red circle")


def test_helpers():
    assert normalize_answer("  The  Red  Circle.. ") == "red circle"
    assert parse_box("What is at [0, 5, 3, 8]?") == (0, 5, 3, 8)
    assert parse_box("nothing") is None
