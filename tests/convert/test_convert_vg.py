"""Visual Genome: question_answers -> vg_vqa, region_descriptions -> vg_regions, objects -> vg_objects."""

import pytest
from convert_helpers import answers, instruction, load, templates, write_json

from fusevlm.data.convert import ConvertError, convert

IMAGE_DATA = [
    {"width": 800, "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "height": 600,
     "image_id": 1, "coco_id": None, "flickr_id": None},
    {"width": 640, "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg", "height": 480,
     "image_id": 2, "coco_id": 9, "flickr_id": None},
    {"width": None, "url": "https://cs.stanford.edu/people/rak248/VG_100K/3.jpg", "height": None,
     "image_id": 3, "coco_id": None, "flickr_id": None},
]


def qa(qa_id, image_id, q, a):
    return {"a_objects": [], "question": q, "image_id": image_id, "qa_id": qa_id, "answer": a, "q_objects": []}


QAS = [
    {"id": 1, "qas": [qa(10, 1, "What color is the bus?", "Red."), qa(11, 1, "Where is the bus?", "On the road."),
                      qa(12, 1, "   ", "Nothing."), qa(13, 1, "How many wheels?", "Four.")]},
    {"id": 2, "qas": [qa(20, 2, "Who is smiling?", "The woman.")]},
    {"id": 99, "qas": [qa(990, 99, "Is it sunny?", "Yes.")]},
]


def test_vg_vqa_groups_qas_per_image_into_multiturn(tmp_path):
    qa_file = write_json(tmp_path / "question_answers.json", QAS)
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    stats = convert("vg_vqa", [qa_file, image_data], tmp_path / "o.json", max_turns=2, seed=2)
    records = load(tmp_path / "o.json")
    assert [(r["id"], r["image"]) for r in records] == [
        ("vg_vqa_1_0", "VG_100K_2/1.jpg"), ("vg_vqa_1_1", "VG_100K_2/1.jpg"), ("vg_vqa_2_0", "VG_100K/2.jpg")]
    assert [answers(r) for r in records] == [["Red.", "On the road."], ["Four."], ["The woman."]]
    first = records[0]
    assert first["task"] == "vqa" and len(first["conversations"]) == 4
    # one template per conversation, wrapping each question; <image> only in the first human turn
    (template,) = [t for t in templates("vqa", question="{question}")
                   if t.format(question="What color is the bus?") == instruction(first, 0)]
    assert instruction(first, 1) == template.format(question="Where is the bus?")
    assert stats["unit"] == "qa pairs" and stats["read"] == 6 and stats["written"] == 3
    assert stats["skipped"] == {"empty question or answer": 1, "image not in image_data.json": 1}


def test_vg_vqa_without_image_data_uses_id_names_and_default_turns(tmp_path):
    qa_file = write_json(tmp_path / "qa.json", QAS)
    convert("vg_vqa", [qa_file], tmp_path / "o.json")
    records = load(tmp_path / "o.json")
    assert [(r["id"], r["image"]) for r in records] == [
        ("vg_vqa_1_0", "1.jpg"), ("vg_vqa_2_0", "2.jpg"), ("vg_vqa_99_0", "99.jpg")]
    assert answers(records[0]) == ["Red.", "On the road.", "Four."]


def region(region_id, image_id, phrase, x, y, w, h):
    return {"region_id": region_id, "width": w, "height": h, "image_id": image_id, "phrase": phrase, "y": y, "x": x}


REGIONS = [
    {"id": 1, "regions": [
        region(101, 1, "a red double decker bus", 100, 150, 200, 300),   # -> [125, 250, 375, 750]
        region(102, 1, "sky above the road", 700, -10, 200, 50),         # clamped -> [875, 0, 999, 66]
        region(103, 1, "nothing", 50, 50, 0, 20),                        # zero area
        region(104, 1, "", 10, 10, 10, 10),                              # empty phrase
        region(105, 1, "off the edge", 900, 0, 50, 50),                  # outside the image
    ]},
    {"id": 3, "regions": [region(301, 3, "a tree", 1, 1, 5, 5)]},     # image without size
    {"id": 42, "regions": [region(4201, 42, "a cat", 1, 1, 5, 5)]},   # image not in image_data
]


def test_vg_regions_both_directions_with_normalised_boxes(tmp_path):
    regions = write_json(tmp_path / "region_descriptions.json", REGIONS)
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    stats = convert("vg_regions", [image_data, regions], tmp_path / "o.json", seed=0)  # order does not matter
    records = {r["id"]: r for r in load(tmp_path / "o.json")}
    assert list(records) == ["vg_region_101_cap", "vg_region_101_ref", "vg_region_102_cap", "vg_region_102_ref"]
    assert all(r["image"] == "VG_100K_2/1.jpg" and r["task"] == "grounding" for r in records.values())
    cap, ref = records["vg_region_101_cap"], records["vg_region_101_ref"]
    assert instruction(cap) in templates("region_caption", box="[125, 250, 375, 750]")
    assert answers(cap) == ["a red double decker bus"]
    assert instruction(ref) in templates("region_ground", phrase="a red double decker bus")
    assert answers(ref) == ["[125, 250, 375, 750]"]
    assert answers(records["vg_region_102_ref"]) == ["[875, 0, 999, 66]"]
    assert stats["unit"] == "regions" and stats["read"] == 7 and stats["written"] == 4
    assert stats["skipped"] == {"zero-area box": 1, "empty phrase": 1, "box empty after clamping to the image": 1,
                                "missing image size": 2}


def test_vg_regions_needs_image_data_and_checks_fields(tmp_path):
    regions = write_json(tmp_path / "region_descriptions.json", REGIONS)
    with pytest.raises(ValueError, match="image_data.json"):
        convert("vg_regions", [regions], tmp_path / "o.json")
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    bad = [{"id": 1, "regions": [region(1, 1, "a", 0, 0, 5, 5), region(2, 1, "b", "10", 0, 5, 5)]}]
    bad_file = write_json(tmp_path / "bad_regions.json", bad)
    with pytest.raises(ConvertError) as e:
        convert("vg_regions", [bad_file, image_data], tmp_path / "o.json")
    assert (e.value.file, e.value.record, e.value.field) == (str(bad_file), 0, "regions[1].x")
    assert "expected a number, got str" in str(e.value)
    # a file of another kind is refused by name
    qa_file = write_json(tmp_path / "qa.json", QAS)
    with pytest.raises(ConvertError, match=r"qa.json: is a Visual Genome question_answers file"):
        convert("vg_regions", [qa_file, image_data], tmp_path / "o.json")


def obj(object_id, names, x, y, w, h):
    return {"synsets": [], "h": h, "object_id": object_id, "merged_object_ids": [], "names": names,
            "w": w, "y": y, "x": x}


OBJECTS = [
    {"image_id": 1, "image_url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg", "objects": [
        obj(1, ["bus"], 100, 150, 200, 300),          # [125, 250, 375, 750]
        obj(2, ["sky", "air"], 0, 0, 800, 120),        # [0, 0, 999, 200]
        obj(3, ["bus"], 100, 150, 200, 300),          # duplicate of 1
        obj(4, ["wheel"], 120, 420, 40, 30),          # [150, 700, 200, 750]
        obj(5, ["ghost"], 10, 10, 0, 0),              # zero area
        obj(6, [" "], 10, 10, 5, 5),                  # empty name
    ]},
    {"image_id": 2, "objects": [obj(7, ["dot"], 700, 10, 5, 5)]},        # outside 640-wide image
    {"image_id": 3, "objects": [obj(8, ["tree"], 1, 1, 5, 5)]},          # no size
]


def test_vg_objects_grounded_caption(tmp_path):
    objects = write_json(tmp_path / "objects.json", OBJECTS)
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    stats = convert("vg_objects", [objects, image_data], tmp_path / "o.json", seed=9)
    (rec,) = load(tmp_path / "o.json")
    assert rec["id"] == "vg_objects_1" and rec["image"] == "VG_100K_2/1.jpg" and rec["task"] == "grounded_caption"
    assert instruction(rec) in templates("grounded_caption")
    # reading order: top to bottom, then left to right
    assert answers(rec) == ["sky [0, 0, 999, 200]; bus [125, 250, 375, 750]; wheel [150, 700, 200, 750]"]
    assert stats["unit"] == "images" and stats["read"] == 3 and stats["written"] == 1
    assert stats["skipped"] == {
        "object: duplicate": 1, "object: zero-area box": 1, "object: empty name": 1,
        "object: box empty after clamping to the image": 1, "image without usable objects": 1,
        "missing image size": 1,
    }


def test_vg_objects_v10_single_name_and_bad_names(tmp_path):
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    v10 = [{"image_id": 2, "objects": [{"object_id": 1, "x": 0, "y": 0, "w": 64, "h": 48, "name": "cup"}]}]
    convert("vg_objects", [write_json(tmp_path / "objects_v1.json", v10), image_data], tmp_path / "o.json")
    assert answers(load(tmp_path / "o.json")[0]) == ["cup [0, 0, 100, 100]"]
    bad = [{"image_id": 2, "objects": [obj(1, "cup", 0, 0, 5, 5)]}]
    with pytest.raises(ConvertError, match=r"record 0: field 'objects\[0\].names': expected a list"):
        convert("vg_objects", [write_json(tmp_path / "bad.json", bad), image_data], tmp_path / "o.json")


def test_vg_sampling_counts_and_determinism(tmp_path):
    regions = write_json(tmp_path / "region_descriptions.json", REGIONS)
    image_data = write_json(tmp_path / "image_data.json", IMAGE_DATA)
    a = convert("vg_regions", [regions, image_data], tmp_path / "a.json", num_samples=3, seed=5)
    convert("vg_regions", [regions, image_data], tmp_path / "b.json", num_samples=3, seed=5)
    assert a["written"] == 3 and a["candidates"] == 4
    assert load(tmp_path / "a.json") == load(tmp_path / "b.json")


def test_vg_vqa_phrasings_vary_between_conversations(tmp_path):
    many = [{"id": i, "qas": [qa(i, i, f"What is item {i}?", "A thing.")]} for i in range(1, 41)]
    convert("vg_vqa", [write_json(tmp_path / "qa.json", many)], tmp_path / "o.json", seed=0)
    used = set()
    for i, rec in enumerate(load(tmp_path / "o.json"), start=1):
        (template,) = [t for t in templates("vqa", question="{question}")
                       if t.format(question=f"What is item {i}?") == instruction(rec)]
        used.add(template)
    assert len(used) > 1
