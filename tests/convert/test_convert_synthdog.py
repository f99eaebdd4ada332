import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from convert_helpers import answers, image_bytes, instruction, load, templates
from PIL import Image

from fusevlm.data.convert import ConvertError, convert


def write_shard(path: Path, texts: list[str], fmt: str = "JPEG", raw_gt: dict[int, str] | None = None,
                row_group_size: int = 2) -> Path:
    """A synthdog parquet shard: image = {bytes, path} struct, ground_truth = JSON string (gt_parse.text_sequence)."""
    raw_gt = raw_gt or {}
    images = [{"bytes": image_bytes(fmt, color=(i * 40 % 255, 10, 10)), "path": None} for i in range(len(texts))]
    gts = [raw_gt.get(i, json.dumps({"gt_parse": {"text_sequence": t}}, ensure_ascii=False))
           for i, t in enumerate(texts)]
    table = pa.table({
        "image": pa.array(images, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "ground_truth": pa.array(gts, type=pa.string()),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


EN = ["The quick brown fox", "jumps over", "", "the lazy dog"]


def test_synthdog_en_records_and_images(tmp_path):
    shard = write_shard(tmp_path / "synthdog-en" / "train-00000-of-00002.parquet", EN)
    out = tmp_path / "out" / "synthdog_en.json"
    stats = convert("synthdog", [shard], out, seed=3)
    records = load(out)
    stem = "train-00000-of-00002"
    assert [r["id"] for r in records] == [f"synthdog_en_{stem}_{i:06d}" for i in (0, 1, 3)]
    assert [r["image"] for r in records] == [f"{stem}/{i:06d}.jpg" for i in (0, 1, 3)]
    assert [answers(r) for r in records] == [["The quick brown fox"], ["jumps over"], ["the lazy dog"]]
    assert all(r["task"] == "ocr" and len(r["conversations"]) == 2 for r in records)
    assert all(instruction(r) in templates("ocr", "en") for r in records)
    # images next to the output by default, one per record, the original JPEG bytes
    image_dir = tmp_path / "out" / "synthdog_en_images"
    for r, i in zip(records, (0, 1, 3), strict=True):
        data = (image_dir / r["image"]).read_bytes()
        assert data == pq.read_table(shard).column("image")[i].as_py()["bytes"]
    assert sorted(p.name for p in (image_dir / stem).iterdir()) == ["000000.jpg", "000001.jpg", "000003.jpg"]
    assert stats["read"] == 4 and stats["unit"] == "rows" and stats["written"] == 3
    assert stats["skipped"] == {"empty text": 1}
    assert stats["lang"] == "en" and stats["images_written"] == 3 and stats["images_reencoded"] == 0


def test_synthdog_zh_detected_from_text_gets_chinese_instructions(tmp_path):
    shard = write_shard(tmp_path / "shard.parquet", ["你好世界，这是一段中文文本", "合成文档数据"])
    out = tmp_path / "zh.json"
    stats = convert("synthdog", [shard], out, image_dir=tmp_path / "imgs")
    records = load(out)
    assert stats["lang"] == "zh"
    assert [r["id"] for r in records] == ["synthdog_zh_shard_000000", "synthdog_zh_shard_000001"]
    assert all(instruction(r) in templates("ocr", "zh") for r in records)
    assert answers(records[1]) == ["合成文档数据"]
    assert (tmp_path / "imgs" / "shard" / "000001.jpg").is_file()


def test_synthdog_lang_from_path_hint_and_explicit_option(tmp_path):
    shard = write_shard(tmp_path / "synthdog-zh" / "data" / "t.parquet", ["abc def"])  # Latin text, zh release
    assert convert("synthdog", [shard], tmp_path / "a.json")["lang"] == "zh"
    assert instruction(load(tmp_path / "a.json")[0]) in templates("ocr", "zh")
    assert convert("synthdog", [shard], tmp_path / "b.json", lang="en")["lang"] == "en"
    assert instruction(load(tmp_path / "b.json")[0]) in templates("ocr", "en")


def test_synthdog_downsampling_writes_only_selected_images_and_reencodes_png(tmp_path):
    texts = [f"line {i}" for i in range(9)]
    shard = write_shard(tmp_path / "s.parquet", texts, fmt="PNG", row_group_size=3)
    out = tmp_path / "d.json"
    stats = convert("synthdog", [shard], out, num_samples=4, seed=1)
    records = load(out)
    files = sorted((tmp_path / "d_images" / "s").iterdir())
    assert len(records) == 4 and len(files) == 4
    assert sorted(f"s/{f.name}" for f in files) == sorted(r["image"] for r in records)
    assert stats["images_reencoded"] == 4
    for f in files:
        assert f.read_bytes()[:3] == b"\xff\xd8\xff"
        with Image.open(f) as im:
            assert im.format == "JPEG" and im.size == (8, 6)
    # same seed -> same selection and instructions; another seed -> another selection
    convert("synthdog", [shard], tmp_path / "d2.json", num_samples=4, seed=1)
    assert load(tmp_path / "d2.json") == records
    convert("synthdog", [shard], tmp_path / "d3.json", num_samples=4, seed=2)
    assert [r["id"] for r in load(tmp_path / "d3.json")] != [r["id"] for r in records]


def test_synthdog_upsampling_repeats_with_suffixed_ids(tmp_path):
    shard = write_shard(tmp_path / "u.parquet", ["a", "b"])
    stats = convert("synthdog", [shard], tmp_path / "u.json", num_samples=5, lang="en")
    ids = [r["id"] for r in load(tmp_path / "u.json")]
    assert ids[:4] == ["synthdog_en_u_000000", "synthdog_en_u_000001",
                       "synthdog_en_u_000000#1", "synthdog_en_u_000001#1"]
    assert ids[4] in {"synthdog_en_u_000000#2", "synthdog_en_u_000001#2"}
    assert stats["written"] == 5 and stats["repeated"] == 3 and stats["images_written"] == 2


def test_synthdog_bad_ground_truth_names_file_row_field(tmp_path):
    shard = write_shard(tmp_path / "bad.parquet", ["ok", "x"], raw_gt={1: "{not json"})
    with pytest.raises(ConvertError) as e:
        convert("synthdog", [shard], tmp_path / "o.json", lang="en")
    assert (e.value.file, e.value.record, e.value.field) == (str(shard), 1, "ground_truth")
    assert "bad.parquet: record 1: field 'ground_truth'" in str(e.value)

    shard2 = write_shard(tmp_path / "bad2.parquet", ["ok"], raw_gt={0: json.dumps({"gt_parse": {}})})
    with pytest.raises(ConvertError, match=r"field 'ground_truth.gt_parse.text_sequence': missing"):
        convert("synthdog", [shard2], tmp_path / "o.json", lang="en")


def test_synthdog_missing_column_and_not_parquet(tmp_path):
    path = tmp_path / "nocol.parquet"
    pq.write_table(pa.table({"image": pa.array([b"x"])}), path)
    with pytest.raises(ConvertError, match=r"nocol.parquet: field 'ground_truth': missing column"):
        convert("synthdog", [path], tmp_path / "o.json")
    junk = tmp_path / "junk.parquet"
    junk.write_text("hello")
    with pytest.raises(ConvertError, match=r"junk.parquet: not a readable parquet file"):
        convert("synthdog", [junk], tmp_path / "o.json")


def test_synthdog_folder_input_takes_all_shards(tmp_path):
    write_shard(tmp_path / "data" / "train-0.parquet", ["a"])
    write_shard(tmp_path / "data" / "train-1.parquet", ["b", "c"])
    stats = convert("synthdog", [tmp_path / "data"], tmp_path / "all.json", lang="en")
    assert stats["written"] == 3
    assert [r["image"] for r in load(tmp_path / "all.json")] == ["train-0/000000.jpg", "train-1/000000.jpg",
                                                                  "train-1/000001.jpg"]


def test_synthdog_reads_only_row_groups_with_selected_rows(tmp_path, monkeypatch):
    shard = write_shard(tmp_path / "g.parquet", [f"t{i}" for i in range(6)], row_group_size=2)  # 3 row groups
    calls = []
    original = pq.ParquetFile.read_row_group

    def counting(self, i, *args, **kwargs):
        calls.append(i)
        return original(self, i, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    convert("synthdog", [shard], tmp_path / "g.json", num_samples=1, lang="en")
    (rec,) = load(tmp_path / "g.json")
    assert calls == [int(rec["image"].split("/")[1][:6]) // 2]


def test_synthdog_missing_image_bytes_names_row(tmp_path):
    table = pa.table({
        "image": pa.array([{"bytes": image_bytes(), "path": None}, {"bytes": None, "path": "x.jpg"}],
                          type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        "ground_truth": [json.dumps({"gt_parse": {"text_sequence": t}}) for t in ("a", "b")],
    })
    pq.write_table(table, tmp_path / "nob.parquet")
    with pytest.raises(ConvertError, match=r"nob.parquet: record 1: field 'image.bytes': expected image bytes"):
        convert("synthdog", [tmp_path / "nob.parquet"], tmp_path / "o.json", lang="en")
