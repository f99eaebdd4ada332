"""Bad data through the real path (records -> ConversationDataset -> ``train()``), under both ``on_bad_sample``
policies: ``error`` raises a ``DataError`` naming file, record, id and field; ``skip`` trains on the rest and counts
the record under its reason in ``data_report.json`` and in the printed summary. Never a crash deep in the model.

Duplicated ids are a bad sample like any other: an error under ``error``, and under ``skip`` the second record
with the id is dropped and counted as ``duplicate_id`` (the first one is kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from robust_helpers import good_records, png_bytes, qa, recipe, write_records

from fusevlm.data.errors import DataError
from fusevlm.data.images import load_image
from fusevlm.train.recipe import recipe_from_dict
from fusevlm.train.run import train

BAD_ID = "bad"


def record(image=None, conversations=None, **extra):
    item = {"id": BAD_ID, "conversations": qa() if conversations is None else conversations, **extra}
    if image is not None:
        item["image"] = image
    return item


def image_file(root: Path, name: str, data: bytes) -> dict:
    (root / "images" / name).write_bytes(data)
    return record(image=name)


def noise_png(size: int = 48, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels))


def noise_jpeg() -> bytes:
    pixels = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    return png_bytes(Image.fromarray(pixels), "JPEG", quality=95)


def symlink_out(root: Path) -> dict:
    (root / "images" / "link.png").symlink_to(root / "outside.png")
    return record(image="link.png")


@dataclass
class Case:
    name: str
    build: Callable[[Path], object]  # the bad record (a dict, a raw JSONL line, or a non-object), given the data folder
    reason: str
    fragments: tuple[str, ...]  # what the error names besides the file: record, id, field, detail
    fmt: str = "json"
    position: int = 3  # where the bad record sits among the 3 good ones (index in the file)
    model_max_length: int = 128
    template: str = "plain"  # LLaVA's pretraining template keeps only the image and the answer
    names_id: bool = True  # False where the record has no readable id (an unparsable line, a bad id)


CASES = [
    # -- images -----------------------------------------------------------------------------------------------------
    Case("missing image", lambda r: record(image="nope.png"), "missing_image",
         ("field 'image'", "image file not found: 'nope.png'")),
    Case("image path is a folder", lambda r: (r / "images" / "sub.png").mkdir() or record(image="sub.png"),
         "missing_image", ("field 'image'", "image file not found")),
    Case("truncated PNG", lambda r: image_file(r, "cut.png", noise_png()[:-60]), "bad_image",
         ("field 'image[0] (cut.png)'", "corrupt or truncated image")),
    Case("truncated JPEG", lambda r: image_file(r, "cut.jpg", noise_jpeg()[:1500]), "bad_image",
         ("cut.jpg", "truncated")),
    Case("corrupt bytes after a PNG header", lambda r: image_file(r, "junk.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200)),
         "bad_image", ("junk.png",)),
    Case("PNG decompression bomb", lambda r: image_file(r, "bomb.png", png_bytes(Image.new("1", (10000, 10000)))),
         "image_too_large", ("bomb.png", "10000x10000 = 100000000 pixels, over max_pixels")),
    Case("zero-byte image file", lambda r: image_file(r, "empty.png", b""), "bad_image",
         ("empty.png", "image is empty (0 bytes)")),
    Case("a text file named .png", lambda r: image_file(r, "notes.png", b"not a picture\n"), "bad_image",
         ("notes.png", "not a recognised image file")),
    # -- files and lines --------------------------------------------------------------------------------------------
    Case("JSONL: a malformed line in the middle", lambda r: b'{"id": "bad", "conversations": [', "bad_json",
         ("line 2", "malformed JSON"), fmt="jsonl", position=1, names_id=False),
    Case("JSONL: a line that is not UTF-8", lambda r: b'{"id": "bad", "conversations": "\xff\xfe"}', "not_utf8",
         ("line 4", "not valid UTF-8"), fmt="jsonl", names_id=False),
    Case("JSONL: a line that is a list, not an object", lambda r: [1, 2], "bad_type",
         ("line 4", "expected an object, got list"), fmt="jsonl", names_id=False),
    # -- fields -----------------------------------------------------------------------------------------------------
    Case("conversations is a number", lambda r: record(conversations=42), "bad_type",
         ("field 'conversations'", "expected a list of turns, got int")),
    Case("a turn's value is a number", lambda r: record(conversations=[{"from": "human", "value": 5}]), "bad_type",
         ("field 'conversations[0].value'", "expected a string, got int")),
    Case("id is a list", lambda r: {**record(), "id": [1]}, "bad_type", ("field 'id'", "expected a string or int"), names_id=False),
    Case("image is a number", lambda r: record(image=7), "bad_type",
         ("field 'image'", "expected a path, bytes or a {'bytes', 'path'} struct, got int")),
    Case("both image and images", lambda r: record(image="good_0.png", images=["good_1.png"]), "bad_type",
         ("field 'image'", "has both 'image' and 'images'")),
    Case("empty image path", lambda r: record(image=""), "bad_type", ("field 'image'", "image path is empty")),
    Case("image path with a NUL byte", lambda r: record(image="a\x00.png"), "bad_path", ("field 'image'", "bad image path")),
    Case("missing conversations", lambda r: {"id": BAD_ID, "image": "good_0.png"}, "missing_field",
         ("field 'conversations'", "missing")),
    Case("no turns at all", lambda r: record(conversations=[]), "turn_order", ("conversation has no turns",)),
    Case("unknown role", lambda r: record(conversations=[{"from": "robot", "value": "hi"}]), "bad_role",
         ("field 'conversations[0].from'", "unknown role 'robot'")),
    # -- conversations ----------------------------------------------------------------------------------------------
    Case("empty assistant turn", lambda r: record(conversations=qa(answer="  ")), "empty_turn",
         ("field 'conversations[1].value'", "empty assistant turn")),
    Case("empty user turn", lambda r: record(conversations=qa(question="")), "empty_turn",
         ("field 'conversations[0].value'", "empty user turn")),
    Case("turns out of order (assistant first)",
         lambda r: record(conversations=[{"from": "gpt", "value": "red"}, {"from": "human", "value": "hi"}]),
         "turn_order", ("field 'conversations[0]'", "expected a user turn, got assistant")),
    Case("ends on a user turn", lambda r: record(conversations=qa() + [{"from": "human", "value": "and?"}]),
         "turn_order", ("field 'conversations[2]'", "ends on a user turn")),
    Case("more <image> placeholders than images",
         lambda r: record(image="good_0.png", conversations=qa(question="<image><image>\nSame?")), "image_count",
         ("field 'conversations'", "2 <image> placeholder(s) for 1 image(s)")),
    Case("fewer <image> placeholders than images",
         lambda r: record(image=["good_0.png", "good_1.png"], conversations=qa(question="<image>\nWhich?")),
         "image_count", ("field 'conversations'", "1 <image> placeholder(s) for 2 image(s)")),
    Case("<image> inside an assistant turn",
         lambda r: record(image="good_0.png", conversations=qa(answer="<image> red")), "image_placeholder",
         ("field 'conversations[1].value'", "<image> in a assistant turn")),
    Case("text that is not valid Unicode (lone surrogate)", lambda r: record(conversations=qa(answer="\ud800")),
         "not_utf8", ("field 'conversations[1].value'", "not valid UTF-8")),
    Case("longer than model_max_length, the image would be cut",
         lambda r: record(image="good_0.png", conversations=qa(question="word " * 200 + "<image>\nColour?")),
         "too_long", ("field 'conversations'", "model_max_length 128 would cut an image span"), template="chatml"),
    # -- paths ------------------------------------------------------------------------------------------------------
    Case("image path with .. escaping image_root", lambda r: record(image="../outside.png"), "path_escape",
         ("field 'image'", "outside image_root")),
    Case("absolute image path outside image_root", lambda r: record(image=str(r / "outside.png")), "path_escape",
         ("field 'image'", "outside image_root")),
    Case("symlink inside image_root pointing outside", symlink_out, "path_escape",
         ("field 'image'", "outside image_root")),
    Case("duplicated id", lambda r: {**good_records(r / "images", 1)[0], "id": "good-0"}, "duplicate_id",
         ("field 'id'", "duplicate id, first used by record 0"), position=3),
]


def build(tmp_path: Path, case: Case) -> tuple[Path, dict]:
    root = tmp_path / "data"
    records = good_records(root / "images")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(root / "outside.png")
    records.insert(case.position, case.build(root))
    path = write_records(root / f"train.{case.fmt}", records, case.fmt)
    return path, {"path": str(path), "image_root": str(root / "images")}


def bad_id(case: Case) -> str:
    return "good-0" if case.reason == "duplicate_id" else BAD_ID


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_sample_is_an_error_naming_file_record_and_field(case, parts, tmp_path):
    path, entry = build(tmp_path, case)
    values = recipe(parts, entry, tmp_path / "out", on_bad_sample="error", model_max_length=case.model_max_length,
                    template=case.template)
    with pytest.raises(DataError) as info:
        train(recipe_from_dict(values))
    message = str(info.value)
    assert str(path) in message, message
    assert f"record {case.position}" in message, message
    if case.names_id:
        assert f"(id {bad_id(case)!r})" in message, message
    for fragment in case.fragments:
        assert fragment in message, message
    assert info.value.reason == case.reason
    assert not (tmp_path / "out" / "model.safetensors").exists()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_sample_is_skipped_and_counted_in_the_run_summary(case, parts, tmp_path, capsys):
    path, entry = build(tmp_path, case)
    values = recipe(parts, entry, tmp_path / "out", on_bad_sample="skip", model_max_length=case.model_max_length,
                    template=case.template)
    out = train(recipe_from_dict(values))
    report = json.loads((out / "data_report.json").read_text())
    tally = report["datasets"][str(path)]
    assert report["skipped"] == 1 and tally["reasons"] == {case.reason: 1}, report
    assert tally["seen"] == 4
    example = tally["examples"][0]
    assert example["reason"] == case.reason and case.fragments[-1] in example["message"]
    assert f"record {case.position}" in example["message"]
    summary = capsys.readouterr().out
    assert "bad samples: 1 skipped" in summary and f"({case.reason} 1)" in summary, summary
    assert (out / "model.safetensors").is_file()


# -- whole files: an error under either policy (one bad byte makes a JSON list unreadable) ---------------------------
FILE_CASES = {
    "malformed JSON list": (b'[{"id": "a", "conversations": []}, {"id": ', "malformed JSON", "line 1"),
    "JSON list that is not UTF-8": (b'[{"id": "\xff"}]', "file is not valid UTF-8", "line 1"),
    "JSON that is not a list": (b'{"id": "a"}', "expected a JSON list of records, got dict", None),
}


@pytest.mark.parametrize("policy", ["error", "skip"])
@pytest.mark.parametrize("name", list(FILE_CASES))
def test_unreadable_file_is_an_error_under_both_policies(name, policy, parts, tmp_path):
    data, detail, line = FILE_CASES[name]
    path = tmp_path / "train.json"
    path.write_bytes(data)
    with pytest.raises(DataError) as info:
        train(recipe_from_dict(recipe(parts, {"path": str(path)}, tmp_path / "out", on_bad_sample=policy)))
    assert str(path) in str(info.value) and detail in str(info.value)
    if line:
        assert line in str(info.value)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_dataset_whose_every_record_is_bad_is_an_error(policy, parts, tmp_path):
    path = write_records(tmp_path / "train.json", [record(image="nope.png"), record(image="gone.png")])
    with pytest.raises(DataError, match="(all 2 records are bad|image file not found)") as info:
        train(recipe_from_dict(recipe(parts, {"path": str(path)}, tmp_path / "out", on_bad_sample=policy)))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_too_long_conversation_whose_image_fits_is_truncated_and_counted(policy, parts, tmp_path):
    root = tmp_path / "data"
    records = good_records(root / "images")
    records.append({"id": "long", "image": "good_0.png", "conversations": qa(answer="red " * 300)})
    path = write_records(root / "train.json", records)
    out = train(recipe_from_dict(recipe(parts, {"path": str(path), "image_root": str(root / "images")},
                                        tmp_path / "out", on_bad_sample=policy)))
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == 0 and report["samples"] == 4
    assert report["truncated"] == {str(path): 1}


# -- unusual but valid images: converted right, never skipped, never silently wrong -----------------------------------
def rgba_transparent() -> tuple[Image.Image, tuple[int, int, int]]:
    return Image.new("RGBA", (8, 8), (10, 20, 30, 0)), (255, 255, 255)  # transparent over white, not black


def gray16() -> tuple[Image.Image, tuple[int, int, int]]:
    return Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)), (255, 255, 255)  # scaled, not clipped


VALID_IMAGES = {
    "grayscale (L)": (lambda: (Image.new("L", (8, 8), 100), (100, 100, 100)), "PNG"),
    "CMYK JPEG": (lambda: (Image.new("CMYK", (8, 8), (0, 255, 255, 0)), None), "JPEG"),
    "RGBA, fully transparent": (rgba_transparent, "PNG"),
    "16-bit grayscale PNG": (gray16, "PNG"),
    "palette (P)": (lambda: (Image.new("RGB", (8, 8), (0, 0, 255)).convert("P"), (0, 0, 255)), "PNG"),
    "1x1": (lambda: (Image.new("RGB", (1, 1), (0, 200, 0)), (0, 200, 0)), "PNG"),
    "huge (4000x3000)": (lambda: (Image.new("RGB", (4000, 3000), (200, 0, 0)), (200, 0, 0)), "PNG"),
}


@pytest.mark.parametrize("name", list(VALID_IMAGES))
def test_unusual_valid_images_train_and_convert_correctly(name, parts, tmp_path):
    make, fmt = VALID_IMAGES[name]
    image, expected = make()
    root = tmp_path / "data"
    records = good_records(root / "images")
    file = f"odd.{fmt.lower()}"
    (root / "images" / file).write_bytes(png_bytes(image, fmt))
    records.append({"id": "odd", "image": file, "conversations": qa()})
    path = write_records(root / "train.json", records)
    out = train(recipe_from_dict(recipe(parts, {"path": str(path), "image_root": str(root / "images")},
                                        tmp_path / "out", on_bad_sample="error")))
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == 0 and report["samples"] == 4
    rgb = load_image(root / "images" / file)
    assert rgb.mode == "RGB" and rgb.size == image.size
    if expected is None:  # CMYK: PIL's own conversion, through JPEG's lossy round trip
        expected = Image.open(root / "images" / file).convert("RGB").getpixel((0, 0))
    assert rgb.getpixel((0, 0)) == expected
