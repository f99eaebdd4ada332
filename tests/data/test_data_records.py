"""Reading every dataset format into records, and every validation error with its location."""

from __future__ import annotations

import io
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fusevlm.data.errors import DataError
from fusevlm.data.images import load_image
from fusevlm.data.records import Record, read_records, resolve_image_path
from fusevlm.data.report import BadSampleReport

RED = (255, 0, 0)


def png_bytes(color=RED, size=(4, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(path, color=RED):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color))
    return path


def turns(*pairs):
    """conversations from (from, value) pairs."""
    return [{"from": who, "value": text} for who, text in pairs]


def qa(question="<image>\nWhat is it?", answer="A square."):
    return turns(("human", question), ("gpt", answer))


def good(record_id="ok-0", image="a.png"):
    if image is None:
        return {"id": record_id, "conversations": qa("What is a square?")}
    return {"id": record_id, "image": image, "conversations": qa()}


def write_json(path, items):
    path.write_text(json.dumps(items), encoding="utf-8")
    return path


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


@pytest.fixture
def root(tmp_path):
    """A dataset folder with images a.png (red) and b.png (blue)."""
    write_png(tmp_path / "a.png", RED)
    write_png(tmp_path / "b.png", (0, 0, 255))
    return tmp_path


# -- formats ---------------------------------------------------------------------------------------------------


def test_json_list(root):
    items = [
        {
            "id": "r0",
            "image": "a.png",
            "conversations": turns(
                ("system", "Be brief."),
                ("human", "<image>\nColour?"),
                ("gpt", "Red."),
                ("human", "Sure?"),
                ("gpt", "Yes."),
            ),
        },
        good("r1", image=None),
    ]
    path = write_json(root / "train.json", items)
    records = read_records(path, task="vqa")
    assert [r.id for r in records] == ["r0", "r1"]
    first = records[0]
    assert isinstance(first, Record)
    assert (first.source, first.index, first.task) == (str(path), 0, "vqa")
    assert first.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<image>\nColour?"},
        {"role": "assistant", "content": "Red."},
        {"role": "user", "content": "Sure?"},
        {"role": "assistant", "content": "Yes."},
    ]
    assert first.images[0].path == (root / "a.png").resolve()
    assert first.images[0].label == "a.png"
    assert load_image(first.images[0]).getpixel((0, 0)) == RED
    assert records[1].images == []  # text-only


def test_user_assistant_roles_and_role_content_keys(root):
    item = {
        "id": "x",
        "image": "a.png",
        "conversations": [{"role": "user", "content": "<image> hi"}, {"from": "assistant", "value": "hello"}],
    }
    (record,) = read_records(write_json(root / "d.json", [item]))
    assert [m["role"] for m in record.messages] == ["user", "assistant"]
    assert record.messages[0]["content"] == "<image> hi"


def test_jsonl_index_is_line_number_minus_one(root):
    path = root / "train.jsonl"
    path.write_text(json.dumps(good("a")) + "\n\n" + json.dumps(good("b")) + "\n", encoding="utf-8")
    records = read_records(path)
    assert [(r.id, r.index) for r in records] == [("a", 0), ("b", 2)]


def test_several_images_keep_their_order(root):
    item = {
        "id": "two",
        "image": ["b.png", "a.png"],
        "conversations": qa("First <image>, then <image>: same?", "No."),
    }
    (record,) = read_records(write_json(root / "d.json", [item]))
    assert [ref.label for ref in record.images] == ["b.png", "a.png"]
    assert [load_image(ref).getpixel((0, 0)) for ref in record.images] == [(0, 0, 255), RED]


def test_single_image_without_placeholder_gets_one_before_the_first_user_turn(root):
    item = {
        "id": "cap",
        "image": "a.png",
        "conversations": turns(
            ("system", "S"), ("human", "Describe."), ("gpt", "Red."), ("human", "More?"), ("gpt", "No.")
        ),
    }
    (record,) = read_records(write_json(root / "d.json", [item]))
    assert record.messages[1]["content"] == "<image>\nDescribe."
    assert record.messages[3]["content"] == "More?"


def test_int_and_missing_ids(root):
    items = [{"id": 7, "conversations": qa("Q?")}, {"conversations": qa("Q?")}]
    records = read_records(write_json(root / "d.json", items))
    assert [r.id for r in records] == ["7", "#1"]


def test_require_answer_false_allows_a_final_user_turn(root):
    item = {"id": "p", "image": "a.png", "conversations": turns(("human", "<image>\nWhat?"))}
    path = write_json(root / "d.json", [item])
    with pytest.raises(DataError, match="ends on a user turn"):
        read_records(path)
    (record,) = read_records(path, require_answer=False)
    assert record.messages == [{"role": "user", "content": "<image>\nWhat?"}]


def test_image_root_and_absolute_paths_inside_it(tmp_path):
    images = tmp_path / "imgs"
    write_png(images / "sub" / "c.png")
    items = [
        good("rel", "sub/c.png"),
        good("abs", str(images / "sub" / "c.png")),
        good("dots", "sub/../sub/c.png"),
    ]
    records = read_records(write_json(tmp_path / "d.json", items), image_root=images)
    assert {r.images[0].path for r in records} == {(images / "sub" / "c.png").resolve()}


def test_image_root_must_exist(root):
    with pytest.raises(DataError, match="image_root"):
        read_records(write_json(root / "d.json", [good()]), image_root=root / "missing")


PARQUET_IMAGE_COLUMNS = {
    "bytes": lambda: png_bytes(),
    "list_of_bytes": lambda: [png_bytes()],
    "hf_struct": lambda: {"bytes": png_bytes(), "path": "orig/a.png"},
    "list_of_hf_structs": lambda: [{"bytes": png_bytes(), "path": None}],
}


@pytest.mark.parametrize("kind", sorted(PARQUET_IMAGE_COLUMNS))
@pytest.mark.parametrize("conversations_as_json", [False, True])
def test_parquet_with_image_bytes(tmp_path, kind, conversations_as_json):
    conversations = qa()
    rows = [
        {
            "id": f"p{i}",
            "image": PARQUET_IMAGE_COLUMNS[kind](),
            "conversations": json.dumps(conversations) if conversations_as_json else conversations,
        }
        for i in range(3)
    ]
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = read_records(path)
    assert [r.id for r in records] == ["p0", "p1", "p2"]
    assert records[2].index == 2 and records[2].source == str(path)
    ref = records[0].images[0]
    assert ref.data == png_bytes() and ref.path is None
    assert str(path) in ref.label
    assert load_image(ref).getpixel((0, 0)) == RED
    assert records[0].messages[1] == {"role": "assistant", "content": "A square."}


def test_parquet_with_path_strings_and_text_only_rows(root):
    rows = [good("a", "a.png"), good("t", None) | {"image": None}]
    path = root / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = read_records(path)
    assert records[0].images[0].path == (root / "a.png").resolve()
    assert records[1].images == []


def test_folder_of_parquet_shards(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(2):
        rows = [{"id": f"s{shard}-{i}", "image": png_bytes(), "conversations": qa()} for i in range(2)]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{shard}.parquet")
    records = read_records(folder)
    assert [r.id for r in records] == ["s0-0", "s0-1", "s1-0", "s1-1"]
    assert records[2].source == str(folder / "part-1.parquet") and records[2].index == 0


def _hf_dataset(many_images: bool) -> datasets.Dataset:
    image = {"bytes": png_bytes(), "path": "x.png"}
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.List(datasets.Image()) if many_images else datasets.Image(),
            "conversations": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "id": ["h0", "h1"],
            "image": [[image, image], [image, image]] if many_images else [image, image],
            "conversations": [json.dumps(qa("<image><image> same?" if many_images else "<image> what?"))] * 2,
        },
        features=features,
    )


@pytest.mark.parametrize("many_images", [False, True])
def test_hf_dataset_saved_to_disk(tmp_path, many_images):
    _hf_dataset(many_images).save_to_disk(str(tmp_path / "hf"))
    records = read_records(tmp_path / "hf")
    assert [r.id for r in records] == ["h0", "h1"]
    assert len(records[0].images) == (2 if many_images else 1)
    assert all(load_image(ref).getpixel((0, 0)) == RED for ref in records[0].images)
    assert records[1].source == str(tmp_path / "hf")


def test_dataset_dict_folder_asks_for_a_split(tmp_path):
    datasets.DatasetDict(train=_hf_dataset(False), test=_hf_dataset(False)).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="DatasetDict.*test, train"):
        read_records(tmp_path / "dd")
    assert len(read_records(tmp_path / "dd" / "train")) == 2


def test_folder_without_data(tmp_path):
    with pytest.raises(DataError, match="neither"):
        read_records(tmp_path)


# -- whole-file errors (raised whatever the policy) ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_malformed_json_list_is_always_an_error(root, policy):
    path = root / "broken.json"
    path.write_text('[\n{"id": "a", "conversations": []},\n{"id": "b",, }\n]')
    with pytest.raises(DataError, match="malformed JSON") as info:
        read_records(path, on_bad_sample=policy)
    assert "broken.json" in str(info.value) and "line 3" in str(info.value)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_non_utf8_json_file_is_always_an_error(root, policy):
    path = root / "latin1.json"
    path.write_bytes(b'[{"id": "a",\n "conversations": [{"from": "human", "value": "caf\xe9"}]}]')
    with pytest.raises(DataError, match="UTF-8") as info:
        read_records(path, on_bad_sample=policy)
    assert "latin1.json" in str(info.value) and "line 2" in str(info.value)


def test_json_top_level_must_be_a_list(root):
    with pytest.raises(DataError, match="JSON list"):
        read_records(write_json(root / "d.json", {"id": "a"}))


def test_unknown_format_and_missing_file(root):
    (root / "d.csv").write_text("id\n")
    with pytest.raises(DataError, match="unknown data format"):
        read_records(root / "d.csv")
    with pytest.raises(DataError, match="not found"):
        read_records(root / "nope.json")


def test_corrupt_parquet_file(root):
    (root / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match="Parquet") as info:
        read_records(root / "bad.parquet", on_bad_sample="skip")
    assert "bad.parquet" in str(info.value)


def test_invalid_policy(root):
    with pytest.raises(ValueError, match="on_bad_sample"):
        read_records(write_json(root / "d.json", [good()]), on_bad_sample="ignore")


def test_all_records_bad_is_an_error_even_when_skipping(root):
    path = write_json(root / "d.json", [good("a", "missing.png"), good("b", "missing.png")])
    with pytest.raises(DataError, match="all 2 records are bad") as info:
        read_records(path, on_bad_sample="skip")
    assert "missing_image 2" in str(info.value)


# -- record errors: each names file, record index and id, and field ------------------------------------------------

# One row per failure: (record, the field its error must name, its reason).
# fmt: off
BAD_RECORDS = {
    "not_an_object": (["just", "a", "list"], None, "bad_type"),
    "id_type": ({"id": ["x"], "conversations": qa("Q?")}, "id", "bad_type"),
    "image_type": ({"id": "bad-1", "image": 3, "conversations": qa()}, "image", "bad_type"),
    "image_list_item_type": ({"id": "bad-1", "image": ["a.png", 3], "conversations": qa("<image><image>")}, "image[1]", "bad_type"),
    "image_empty_path": ({"id": "bad-1", "image": "", "conversations": qa()}, "image", "bad_type"),
    "image_and_images": ({"id": "bad-1", "image": "a.png", "images": ["a.png"], "conversations": qa()}, "image", "bad_type"),
    "missing_image_file": ({"id": "bad-1", "image": "nope.png", "conversations": qa()}, "image", "missing_image"),
    "missing_conversations": ({"id": "bad-1", "image": "a.png"}, "conversations", "missing_field"),
    "conversations_type": ({"id": "bad-1", "conversations": {"from": "human"}}, "conversations", "bad_type"),
    "conversations_bad_json_string": ({"id": "bad-1", "conversations": "[{"}, "conversations", "bad_json"),
    "turn_type": ({"id": "bad-1", "conversations": ["hi", "there"]}, "conversations[0]", "bad_type"),
    "value_type": ({"id": "bad-1", "conversations": turns(("human", "Q?"), ("gpt", None))}, "conversations[1].value", "bad_type"),
    "from_type": ({"id": "bad-1", "conversations": [{"from": 1, "value": "Q?"}]}, "conversations[0].from", "bad_type"),
    "unknown_role": ({"id": "bad-1", "conversations": turns(("bot", "Q?"), ("gpt", "A"))}, "conversations[0].from", "bad_role"),
    "empty_conversation": ({"id": "bad-1", "conversations": []}, "conversations", "turn_order"),
    "empty_assistant_turn": ({"id": "bad-1", "conversations": qa("Q?", "  \n")}, "conversations[1].value", "empty_turn"),
    "empty_user_turn": ({"id": "bad-1", "conversations": qa("", "A")}, "conversations[0].value", "empty_turn"),
    "assistant_first": ({"id": "bad-1", "conversations": turns(("gpt", "A"), ("human", "Q?"))}, "conversations[0]", "turn_order"),
    "two_user_turns": ({"id": "bad-1", "conversations": turns(("human", "Q"), ("human", "Q"), ("gpt", "A"))}, "conversations[1]", "turn_order"),
    "system_in_the_middle": (
        {"id": "bad-1", "conversations": turns(("human", "Q"), ("system", "S"), ("gpt", "A"))},
        "conversations[1]",
        "turn_order",
    ),
    "only_system": ({"id": "bad-1", "conversations": turns(("system", "S"))}, "conversations", "turn_order"),
    "ends_on_user": ({"id": "bad-1", "conversations": turns(("human", "Q"), ("gpt", "A"), ("human", "Q"))}, "conversations[2]", "turn_order"),
    "placeholder_in_assistant": ({"id": "bad-1", "conversations": qa("Q?", "Here: <image>")}, "conversations[1].value", "image_placeholder"),
    "placeholder_in_system": (
        {"id": "bad-1", "image": "a.png", "conversations": turns(("system", "<image>"), ("human", "Q"), ("gpt", "A"))},
        "conversations[0].value",
        "image_placeholder",
    ),
    "placeholder_without_image": ({"id": "bad-1", "conversations": qa("<image>\nQ?")}, "conversations", "image_count"),
    "two_images_one_placeholder": ({"id": "bad-1", "image": ["a.png", "b.png"], "conversations": qa()}, "conversations", "image_count"),
    "one_image_two_placeholders": ({"id": "bad-1", "image": "a.png", "conversations": qa("<image><image>")}, "conversations", "image_count"),
    "two_images_no_placeholder": ({"id": "bad-1", "image": ["a.png", "b.png"], "conversations": qa("Q?")}, "conversations", "image_count"),
    "lone_surrogate": ({"id": "bad-1", "conversations": qa("caf\ud800", "A")}, "conversations[0].value", "not_utf8"),
}
# fmt: on


def _write_bad_dataset(root, bad, fmt):
    items = [good("ok-0"), bad, good("ok-2")]
    if fmt == "json":
        return write_json(root / "d.json", items)
    return write_jsonl(root / "d.jsonl", items)


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_record_is_named_and_raised(root, name, fmt):
    bad, field, reason = BAD_RECORDS[name]
    path = _write_bad_dataset(root, bad, fmt)
    with pytest.raises(DataError) as info:
        read_records(path)
    err, message = info.value, str(info.value)
    assert (err.source, err.index, err.reason) == (str(path), 1, reason)
    assert path.name in message and "record 1" in message
    if isinstance(bad, dict) and isinstance(bad.get("id"), str):
        assert err.record_id == "bad-1" and "'bad-1'" in message
    if field is not None:
        assert err.field == field and repr(field) in message
    if fmt == "jsonl":
        assert "line 2" in message


@pytest.mark.parametrize("name", sorted(BAD_RECORDS))
def test_bad_record_is_skipped_and_counted(root, name):
    bad, _, reason = BAD_RECORDS[name]
    path = _write_bad_dataset(root, bad, "json")
    report = BadSampleReport()
    records = read_records(path, on_bad_sample="skip", report=report)
    assert [r.id for r in records] == ["ok-0", "ok-2"]
    assert report.reasons(str(path)) == {reason: 1}
    tally = report.datasets[str(path)]
    assert (tally["seen"], tally["kept"], tally["skipped"]) == (3, 2, 1)
    assert tally["examples"][0]["index"] == 1


def test_bad_jsonl_line_in_the_middle(root):
    path = root / "d.jsonl"
    path.write_text(
        json.dumps(good("a")) + "\n" + '{"id": "b", "conversations": [\n' + json.dumps(good("c")) + "\n"
    )
    with pytest.raises(DataError, match="malformed JSON") as info:
        read_records(path)
    assert "d.jsonl" in str(info.value) and "line 2" in str(info.value) and info.value.line == 2
    report = BadSampleReport()
    records = read_records(path, on_bad_sample="skip", report=report)
    assert [(r.id, r.index) for r in records] == [("a", 0), ("c", 2)]
    assert report.reasons() == {"bad_json": 1}


def test_non_utf8_jsonl_line_is_a_bad_record(root):
    path = root / "d.jsonl"
    path.write_bytes(
        (json.dumps(good("a")) + "\n").encode()
        + b'{"id": "b", "conversations": "caf\xe9"}\n'
        + json.dumps(good("c")).encode()
    )
    with pytest.raises(DataError, match="UTF-8") as info:
        read_records(path)
    assert "line 2" in str(info.value) and info.value.reason == "not_utf8"
    report = BadSampleReport()
    assert [r.id for r in read_records(path, on_bad_sample="skip", report=report)] == ["a", "c"]
    assert report.reasons() == {"not_utf8": 1}


def test_duplicate_ids_within_a_file(root):
    path = write_json(root / "d.json", [good("a"), good("b"), good("a")])
    with pytest.raises(DataError, match="duplicate id, first used by record 0") as info:
        read_records(path)
    assert (info.value.index, info.value.record_id, info.value.field) == (2, "a", "id")
    assert "record 2" in str(info.value) and "d.json" in str(info.value)
    report = BadSampleReport()
    records = read_records(path, on_bad_sample="skip", report=report)
    assert [(r.id, r.index) for r in records] == [("a", 0), ("b", 1)]
    assert report.reasons() == {"duplicate_id": 1}


def test_same_id_in_two_files_is_fine(root):
    assert read_records(write_json(root / "one.json", [good("a")]))[0].id == "a"
    assert read_records(write_json(root / "two.json", [good("a")]))[0].id == "a"


def test_empty_image_bytes_in_parquet(tmp_path):
    rows = [
        {"id": "a", "image": png_bytes(), "conversations": qa()},
        {"id": "b", "image": b"", "conversations": qa()},
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match="empty") as info:
        read_records(path)
    assert (info.value.index, info.value.record_id, info.value.field) == (1, "b", "image")


# -- image paths may not leave image_root ----------------------------------------------------------------------


@pytest.fixture
def outside(tmp_path):
    """An image root and a real image just outside it, so only the location makes the path bad."""
    write_png(tmp_path / "secret.png")
    images = tmp_path / "images"
    write_png(images / "a.png")
    return images


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "symlinked_folder"])
def test_path_escape_is_refused(tmp_path, outside, how):
    images = outside
    if how == "dotdot":
        image = "../secret.png"
    elif how == "absolute":
        image = str(tmp_path / "secret.png")
    elif how == "symlink":
        os.symlink(tmp_path / "secret.png", images / "link.png")
        image = "link.png"
    else:
        os.symlink(tmp_path, images / "up")
        image = "up/secret.png"
    path = write_json(tmp_path / "d.json", [good("ok", "a.png"), good("esc", image)])
    with pytest.raises(DataError, match="outside image_root") as info:
        read_records(path, image_root=images)
    err = info.value
    assert (err.index, err.record_id, err.field, err.reason) == (1, "esc", "image", "path_escape")
    report = BadSampleReport()
    kept = read_records(path, image_root=images, on_bad_sample="skip", report=report)
    assert [r.id for r in kept] == ["ok"]
    assert report.reasons() == {"path_escape": 1}


def test_symlink_inside_the_root_is_allowed(outside):
    os.symlink(outside / "a.png", outside / "alias.png")
    assert resolve_image_path("alias.png", outside) == (outside / "a.png").resolve()


def test_image_root_that_is_itself_a_symlink(tmp_path, outside):
    os.symlink(outside, tmp_path / "linked_root")
    assert resolve_image_path("a.png", tmp_path / "linked_root") == (outside / "a.png").resolve()
    with pytest.raises(DataError, match="outside"):
        resolve_image_path("../secret.png", tmp_path / "linked_root")


def test_check_files_false_defers_missing_images(root):
    path = write_json(root / "d.json", [good("a", "later.png")])
    (record,) = read_records(path, check_files=False)
    assert record.images[0].path == (root / "later.png").resolve()


def test_parquet_turns_mixing_llava_and_hf_keys(tmp_path):
    # Arrow gives both rows the union of the struct fields, the absent ones as None.
    rows = [
        {"id": "llava", "conversations": turns(("human", "Q?"), ("gpt", "A."))},
        {
            "id": "hf",
            "conversations": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
        },
    ]
    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    records = read_records(path)
    assert (
        records[0].messages
        == records[1].messages
        == [
            {"role": "user", "content": "Q?"},
            {"role": "assistant", "content": "A."},
        ]
    )
