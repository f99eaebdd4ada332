"""cc3m (TSV and LLaVA JSON) and sbu (official parallel lists, HF rows as JSON / JSONL / parquet)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from convert_helpers import answers, instruction, load, templates, write_json

from fusevlm.data.convert import ConvertError, convert

TSV_ROWS = [
    ("a very typical bus station", "http://example.com/a/bus.jpg"),
    ("sierra looked stunning in this top and this skirt", "https://example.com/b/sierra.png?w=10"),
    ("   ", "http://example.com/c/empty.jpg"),
    ("actor attends the premiere", "http://example.com/d/actor.jpg"),
]


def write_tsv(path, rows=TSV_ROWS):
    path.write_text("".join(f"{c}\t{u}\n" for c, u in rows), encoding="utf-8")
    return path


def test_cc3m_tsv_records_use_row_index_names(tmp_path):
    tsv = write_tsv(tmp_path / "Train_GCC-training.tsv")
    stats = convert("cc3m", [tsv], tmp_path / "cc3m.json")
    records = load(tmp_path / "cc3m.json")
    assert [r["id"] for r in records] == [f"Train_GCC-training_{i:09d}" for i in (0, 1, 3)]
    assert [r["image"] for r in records] == ["000000000.jpg", "000000001.jpg", "000000003.jpg"]
    assert [answers(r) for r in records] == [[TSV_ROWS[0][0]], [TSV_ROWS[1][0]], [TSV_ROWS[3][0]]]
    assert all(r["task"] == "caption" and instruction(r) in templates("caption") for r in records)
    assert stats["read"] == 4 and stats["written"] == 3 and stats["skipped"] == {"empty caption": 1}


def test_cc3m_tsv_image_name_rules(tmp_path):
    tsv = write_tsv(tmp_path / "t.tsv")
    convert("cc3m", [tsv], tmp_path / "a.json", image_name="GCC_train_{index:09d}.jpg")
    assert load(tmp_path / "a.json")[1]["image"] == "GCC_train_000000001.jpg"
    convert("cc3m", [tsv], tmp_path / "b.json", image_name="{stem}/{url_name}")
    assert [r["image"] for r in load(tmp_path / "b.json")] == ["t/bus.jpg", "t/sierra.png", "t/actor.jpg"]
    with pytest.raises(ValueError, match="bad --image-name rule"):
        convert("cc3m", [tsv], tmp_path / "c.json", image_name="{row}.jpg")


def test_cc3m_image_root_skips_missing_files(tmp_path):
    tsv = write_tsv(tmp_path / "t.tsv")
    root = tmp_path / "images"
    root.mkdir()
    (root / "000000003.jpg").write_bytes(b"x")
    stats = convert("cc3m", [tsv], tmp_path / "o.json", image_root=root)
    assert [r["image"] for r in load(tmp_path / "o.json")] == ["000000003.jpg"]
    assert stats["skipped"] == {"empty caption": 1, "image file not found": 2}


def test_cc3m_llava_json_keeps_id_and_image_and_retemplates(tmp_path):
    rows = [
        {"id": "004539375", "image": "00453/004539375.jpg", "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": "select luxury furniture 3 - inch gel memory foam mattress topper"}]},
        {"id": 7, "image": "GCC_train_000000007.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": ""}]},
    ]
    path = write_json(tmp_path / "blip_laion_cc_sbu_558k.json", rows)
    stats = convert("cc3m", [path], tmp_path / "o.json", seed=5)
    (rec,) = load(tmp_path / "o.json")
    assert rec["id"] == "004539375" and rec["image"] == "00453/004539375.jpg" and rec["task"] == "caption"
    assert answers(rec) == ["select luxury furniture 3 - inch gel memory foam mattress topper"]
    assert instruction(rec) in templates("caption")
    assert stats["skipped"] == {"empty caption": 1}
    # the same rows as JSON lines
    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    convert("cc3m", [jsonl], tmp_path / "p.json", seed=5)
    assert load(tmp_path / "p.json") == [rec]


def test_cc3m_upsampling_ids_and_determinism(tmp_path):
    tsv = write_tsv(tmp_path / "t.tsv")
    stats = convert("cc3m", [tsv], tmp_path / "u.json", num_samples=7, seed=11)
    records = load(tmp_path / "u.json")
    ids = [r["id"] for r in records]
    base = [f"t_{i:09d}" for i in (0, 1, 3)]
    assert ids[:6] == base + [f"{b}#1" for b in base]
    assert ids[6] in {f"{b}#2" for b in base}
    assert stats["written"] == 7 and stats["repeated"] == 4 and stats["candidates"] == 3
    # a repeat is the same conversation as its original
    assert records[3]["conversations"] == records[0]["conversations"]
    convert("cc3m", [tsv], tmp_path / "v.json", num_samples=7, seed=11)
    assert load(tmp_path / "v.json") == records


def test_cc3m_seed_changes_instructions(tmp_path):
    rows = [(f"caption {i}", f"http://x/{i}.jpg") for i in range(40)]
    tsv = write_tsv(tmp_path / "many.tsv", rows)
    convert("cc3m", [tsv], tmp_path / "s0.json", seed=0)
    convert("cc3m", [tsv], tmp_path / "s1.json", seed=1)
    a = [instruction(r) for r in load(tmp_path / "s0.json")]
    b = [instruction(r) for r in load(tmp_path / "s1.json")]
    assert a != b and len(set(a)) > 1  # phrasings vary between records and between seeds


def test_cc3m_malformed_inputs_name_file_record_field(tmp_path):
    tsv = tmp_path / "bad.tsv"
    tsv.write_text("ok caption\thttp://x/a.jpg\nno tab here\n")
    with pytest.raises(ConvertError) as e:
        convert("cc3m", [tsv], tmp_path / "o.json")
    assert (e.value.file, e.value.record) == (str(tsv), 1) and "2 tab-separated columns" in str(e.value)
    path = write_json(tmp_path / "bad.json", [{"id": "1", "conversations": []}])
    with pytest.raises(ConvertError, match=r"bad.json: record 0: field 'image': missing"):
        convert("cc3m", [path], tmp_path / "o.json")
    path = write_json(tmp_path / "bad2.json", [{"id": "1", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>"}]}])
    with pytest.raises(ConvertError, match=r"bad2.json: record 0: field 'conversations': has no turn from gpt"):
        convert("cc3m", [path], tmp_path / "o.json")
    broken = tmp_path / "broken.json"
    broken.write_text("[{")
    with pytest.raises(ConvertError, match=r"broken.json: not valid JSON"):
        convert("cc3m", [broken], tmp_path / "o.json")


SBU_URLS = ["http://static.flickr.com/2723/4385058960_b0f291553e.jpg",
            "http://static.flickr.com/3085/3213587355_2a8b5f6e7b.jpg",
            "http://static.flickr.com/1/2_3.jpg"]
SBU_CAPTIONS = ["Man sits in a rusted car buried in the sand", " ", "Interior design of modern living room "]


def test_sbu_official_parallel_lists(tmp_path):
    path = write_json(tmp_path / "sbu-captions-all.json",
                      {"image_urls": SBU_URLS, "captions": SBU_CAPTIONS, "user_ids": ["u1", "u2", "u3"]})
    stats = convert("sbu", [path], tmp_path / "sbu.json", image_name="{url_name}")
    records = load(tmp_path / "sbu.json")
    assert [r["id"] for r in records] == ["sbu-captions-all_000000000", "sbu-captions-all_000000002"]
    assert [r["image"] for r in records] == ["4385058960_b0f291553e.jpg", "2_3.jpg"]
    assert [answers(r) for r in records] == [[SBU_CAPTIONS[0]], ["Interior design of modern living room"]]
    assert all(r["task"] == "caption" and instruction(r) in templates("caption") for r in records)
    assert stats["read"] == 3 and stats["skipped"] == {"empty caption": 1}


def test_sbu_hf_rows_json_jsonl_parquet_agree(tmp_path):
    rows = [{"image_url": u, "user_id": f"u{i}", "caption": c}
            for i, (u, c) in enumerate(zip(SBU_URLS, SBU_CAPTIONS, strict=True))]
    write_json(tmp_path / "sbu.json", rows)
    (tmp_path / "sbu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "sbu.parquet")
    outs = []
    for suffix in ("json", "jsonl", "parquet"):
        convert("sbu", [tmp_path / f"sbu.{suffix}"], tmp_path / f"o_{suffix}.json", seed=4)
        outs.append(load(tmp_path / f"o_{suffix}.json"))
    assert outs[0] == outs[1] == outs[2]
    assert [r["image"] for r in outs[0]] == ["000000000.jpg", "000000002.jpg"]


def test_sbu_malformed(tmp_path):
    path = write_json(tmp_path / "a.json", {"image_urls": SBU_URLS, "captions": SBU_CAPTIONS[:2]})
    with pytest.raises(ConvertError, match=r"a.json: field 'captions': has 2 entries but image_urls has 3"):
        convert("sbu", [path], tmp_path / "o.json")
    path = write_json(tmp_path / "b.json", {"image_urls": SBU_URLS, "captions": ["x", 5, "y"]})
    with pytest.raises(ConvertError, match=r"b.json: record 1: field 'captions': expected a string"):
        convert("sbu", [path], tmp_path / "o.json")
    path = write_json(tmp_path / "c.json", [{"image_url": "http://x/1.jpg"}])
    with pytest.raises(ConvertError, match=r"c.json: record 0: field 'caption': missing"):
        convert("sbu", [path], tmp_path / "o.json")
