import pytest
from convert_helpers import answers, instruction, load, templates, write_json

from fusevlm.data.convert import ConvertError, convert

DATASET = {
    "000000001": {
        "imageURL": "http://ecx.images-amazon.com/images/I/51Bqd3FkdNL.jpg",
        "questions": ["Who wrote this book?", "What is the title of this book?", "What is the genre of this book?",
                      "Is this a comedy book?", "What year?"],
        "answers": ["Jane Doe", "A Book About Things", "Humor & Entertainment", "Yes", 1999],
        "title": "A Book About Things", "authorName": "Jane Doe", "genre": "Humor & Entertainment", "split": 1,
    },
    "000000002": {
        "imageURL": "http://ecx.images-amazon.com/images/I/61x.png",
        "questions": ["Who wrote this book?", "Is this a kids book?"],
        "answers": ["", "No"],
        "title": "T", "authorName": "A", "genre": "G", "split": 2,
    },
    "000000003": {
        "imageURL": "http://ecx.images-amazon.com/images/I/noext",
        "questions": ["Who wrote this book?"], "answers": ["B. Author"],
        "title": "T", "authorName": "B. Author", "genre": "G", "split": 3,
    },
}


def test_ocr_vqa_one_multiturn_conversation_per_image(tmp_path):
    path = write_json(tmp_path / "dataset.json", DATASET)
    stats = convert("ocr_vqa", [path], tmp_path / "o.json", seed=1)
    records = load(tmp_path / "o.json")
    assert [(r["id"], r["image"]) for r in records] == [
        ("ocr_vqa_000000001_0", "000000001.jpg"), ("ocr_vqa_000000002_0", "000000002.png"),
        ("ocr_vqa_000000003_0", "000000003.jpg")]
    first = records[0]
    assert first["task"] == "vqa" and len(first["conversations"]) == 10
    assert answers(first) == ["Jane Doe", "A Book About Things", "Humor & Entertainment", "Yes", "1999"]
    (template,) = [t for t in templates("vqa", question="{question}")
                   if t.format(question="Who wrote this book?") == instruction(first, 0)]
    assert [instruction(first, i) for i in range(5)] == [template.format(question=q)
                                                         for q in DATASET["000000001"]["questions"]]
    assert answers(records[1]) == ["No"]  # the empty answer was dropped
    assert stats["unit"] == "images" and stats["read"] == 3
    assert stats["skipped"] == {"qa pair: empty question or answer": 1}


def test_ocr_vqa_split_filter_and_max_turns(tmp_path):
    path = write_json(tmp_path / "dataset.json", DATASET)
    stats = convert("ocr_vqa", [path], tmp_path / "train.json", split="train", max_turns=2)
    records = load(tmp_path / "train.json")
    assert [r["id"] for r in records] == ["ocr_vqa_000000001_0", "ocr_vqa_000000001_1", "ocr_vqa_000000001_2"]
    assert [len(answers(r)) for r in records] == [2, 2, 1]
    assert stats["skipped"] == {"not in split train": 2}
    convert("ocr_vqa", [path], tmp_path / "test.json", split="test")
    assert [r["id"] for r in load(tmp_path / "test.json")] == ["ocr_vqa_000000003_0"]
    with pytest.raises(ValueError, match="split must be one of"):
        convert("ocr_vqa", [path], tmp_path / "x.json", split="dev")


def test_ocr_vqa_malformed(tmp_path):
    bad = {"k1": {**DATASET["000000001"], "answers": ["only one"]}}
    with pytest.raises(ConvertError) as e:
        convert("ocr_vqa", [write_json(tmp_path / "dataset.json", bad)], tmp_path / "o.json")
    assert (e.value.record, e.value.field) == ("k1", "answers")
    assert "dataset.json: record 'k1': field 'answers': has 1 entries but questions has 5" in str(e.value)
    bad = {"k2": {**DATASET["000000003"], "split": "train"}}
    with pytest.raises(ConvertError, match=r"record 'k2': field 'split': expected a number, got str"):
        convert("ocr_vqa", [write_json(tmp_path / "d2.json", bad)], tmp_path / "o.json")
    bad = {"k3": {**DATASET["000000003"], "questions": [["nested"]]}}
    with pytest.raises(ConvertError, match=r"record 'k3': field 'questions\[0\]': expected a string"):
        convert("ocr_vqa", [write_json(tmp_path / "d3.json", bad)], tmp_path / "o.json")
    with pytest.raises(ConvertError, match=r"d4.json: expected an object keyed by image id"):
        convert("ocr_vqa", [write_json(tmp_path / "d4.json", [1, 2])], tmp_path / "o.json")
