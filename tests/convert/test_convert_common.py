import random
import re

import pytest

from fusevlm.data.convert import TEMPLATES, ConvertError, format_box, normalize_box, sample_indices
from fusevlm.data.convert.common import Where, make_record


def test_normalize_box_hand_computed():
    # 800 x 600 image, box x=100 y=150 w=200 h=300 -> corners (100,150)-(300,450) -> x*1000/800, y*1000/600
    assert normalize_box(100, 150, 200, 300, 800, 600) == [125, 250, 375, 750]
    # floor, not round: 1 px of 3 is 333.33 -> 333; 2 px of 3 -> 666.67 -> 666
    assert normalize_box(1, 1, 1, 1, 3, 3) == [333, 333, 666, 666]


def test_normalize_box_clamps_and_drops_empty():
    # reaches past the right edge and starts above the top: clamped to 999 and 0
    assert normalize_box(700, -10, 200, 50, 800, 600) == [875, 0, 999, 66]
    # a box touching the right/bottom edge ends at 999, not 1000
    assert normalize_box(0, 0, 800, 600, 800, 600) == [0, 0, 999, 999]
    # entirely right of the image: empty after clamping
    assert normalize_box(900, 0, 50, 50, 800, 600) is None
    # thinner than one bin
    assert normalize_box(10, 10, 0.5, 20, 1000, 1000) is None


def test_format_box():
    assert format_box([1, 22, 333, 999]) == "[1, 22, 333, 999]"


def test_sample_indices_all_down_up():
    rng = random.Random(0)
    assert sample_indices(4, None, rng) == [(0, 0), (1, 0), (2, 0), (3, 0)]
    down = sample_indices(10, 4, random.Random(1))
    assert len(down) == 4 and len({i for i, _ in down}) == 4 and down == sorted(down)
    assert all(copy == 0 for _, copy in down)
    up = sample_indices(3, 7, random.Random(1))
    assert len(up) == 7
    assert up[:6] == [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]  # two full passes, then one more draw
    assert up[6][1] == 2
    assert sample_indices(0, 5, rng) == []
    with pytest.raises(ValueError):
        sample_indices(3, -1, rng)


def test_sample_indices_deterministic_by_seed():
    a = sample_indices(100, 10, random.Random("s:1"))
    assert a == sample_indices(100, 10, random.Random("s:1"))
    assert a != sample_indices(100, 10, random.Random("s:2"))


def test_convert_error_names_file_record_field():
    err = Where("some/file.json", 7).error("expected a list, got str", "qas")
    assert isinstance(err, ValueError) and isinstance(err, ConvertError)
    assert str(err) == "some/file.json: record 7: field 'qas': expected a list, got str"
    assert (err.file, err.record, err.field) == ("some/file.json", 7, "qas")


def test_where_get_checks_types():
    where = Where("f.json", "k1")
    assert where.get({"a": 1}, "a", int) == 1
    with pytest.raises(ConvertError, match=r"f.json: record 'k1': field 'a': missing"):
        where.get({}, "a", int)
    with pytest.raises(ConvertError, match=r"field 'x': expected a number, got bool"):
        where.number({"x": True}, "x")
    with pytest.raises(ConvertError, match=r"field 'a.b': expected a string"):
        where.get({"b": 3}, "b", str, label="a.b")
    assert where.get({"a": None}, "a", int, optional=True) is None


def test_make_record_puts_image_token_in_first_turn_only():
    rec = make_record("x", "a.jpg", [("q1", "a1"), ("q2", "a2")], "vqa")
    assert rec == {
        "id": "x", "image": "a.jpg", "task": "vqa",
        "conversations": [
            {"from": "human", "value": "<image>\nq1"}, {"from": "gpt", "value": "a1"},
            {"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"},
        ],
    }


def test_templates_cover_every_kind_in_both_languages():
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for kind, by_lang in TEMPLATES.items():
        assert set(by_lang) == {"en", "zh"}, kind
        assert len(by_lang["en"]) >= 3 and len(by_lang["zh"]) >= 3, kind
        assert all(cjk.search(t) for t in by_lang["zh"] if t != "{question}"), kind
        assert not any(cjk.search(t) for t in by_lang["en"]), kind
