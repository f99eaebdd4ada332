"""The tokenized-dataset cache: keyed by what the tokens depend on, reused without tokenizing again, built in
chunks by several processes with the same result, reports identical from a cache; images looked at only when a
sample is loaded (and by ``fusevlm data check``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fusevlm import build_vlm
from fusevlm.data import cache, records
from fusevlm.data.dataset import Source, load_mixture
from fusevlm.data.errors import DataError
from fusevlm.data.records import read_records
from fusevlm.data.report import BadSampleReport
from fusevlm.templates import CHATML, PLAIN

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def parts(checkpoints):
    return str(checkpoints("vision", "clip", hidden=32)), str(checkpoints("llm", "llama")), str(
        checkpoints("llm", "qwen2"))


@pytest.fixture(scope="module")
def processor(parts):
    return build_vlm(parts[0], "mlp2x_gelu", parts[1])[1]


def qa(answer: str = "red", question: str = "<image>\nWhat color?") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def dataset_folder(root: Path, n: int, name: str = "train.json", fmt: str = "json") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 10 % 256, 0, 0)).save(root / f"{i}.png")
        items.append({"id": f"r{i}", "image": f"{i}.png", "conversations": qa(f"answer number {i} é")})
    path = root / name
    if fmt == "json":
        path.write_text(json.dumps(items))
    else:
        path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


@pytest.fixture
def counted(monkeypatch):
    """Counts the records the map function tokenizes (a cache hit tokenizes none)."""
    calls = []
    original = cache.encode_chunk

    def counting(batch, **kwargs):
        table = original(batch, **kwargs)
        calls.append(table.num_rows)
        return table

    monkeypatch.setattr(cache, "encode_chunk", counting)
    return calls


def folders(cache_dir: Path) -> set[str]:
    return {p.name for p in (cache_dir / "encoded").iterdir() if p.is_dir()}


def test_same_inputs_reuse_the_cache_and_any_change_rebuilds_it(tmp_path, processor, parts, counted):
    path = dataset_folder(tmp_path, 6)
    source = [Source(str(path))]
    store = tmp_path / "cache"

    def load(proc=processor, template=PLAIN, limit=128):
        return load_mixture(source, proc, model_max_length=limit, chat_template=template, cache_dir=store)

    first = load()
    assert sum(counted) == 6 and len(folders(store)) == 1
    again = load()
    assert sum(counted) == 6 and len(folders(store)) == 1  # nothing tokenized: the cache was opened
    assert [again[i]["input_ids"].tolist() for i in range(6)] == [first[i]["input_ids"].tolist() for i in range(6)]

    load(template=CHATML)
    assert sum(counted) == 12 and len(folders(store)) == 2
    load(limit=100)
    assert sum(counted) == 18 and len(folders(store)) == 3
    other = build_vlm(parts[0], "mlp2x_gelu", parts[2])[1]  # another tokenizer
    load(proc=other)
    assert sum(counted) == 24 and len(folders(store)) == 4
    items = json.loads(path.read_text())
    items[0]["conversations"] = qa("blue")
    path.write_text(json.dumps(items))  # new contents
    changed = load()
    assert sum(counted) == 30 and len(folders(store)) == 5
    assert changed[0]["input_ids"].tolist() != first[0]["input_ids"].tolist()


def test_cached_tokens_are_the_processor_s_tokens_of_each_record(tmp_path, processor):
    path = dataset_folder(tmp_path, 5)
    dataset = load_mixture([Source(str(path))], processor, model_max_length=256, chat_template=CHATML,
                           cache_dir=tmp_path / "cache")
    for index, record in enumerate(read_records(path)):
        expected = processor.tokenize_chat(record.messages, chat_template=CHATML)
        item = dataset[index]
        assert item["input_ids"].tolist() == expected["input_ids"]
        assert item["labels"].tolist() == expected["labels"]
        assert dataset.lengths[index] == len(expected["input_ids"])


def bad_mixture(root: Path) -> Path:
    root.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(root / "a.png")
    items = [
        {"id": "ok", "image": "a.png", "conversations": qa()},
        {"id": "num", "conversations": 42},
        {"id": "ok", "image": "a.png", "conversations": qa("again")},
        {"id": "long", "image": "a.png", "conversations": qa("x", "word " * 300 + "<image>")},
        {"id": "role", "conversations": [{"from": "robot", "value": "hi"}]},
        {"id": "fine", "conversations": qa("text only", "hello?")},
    ]
    path = root / "train.json"
    path.write_text(json.dumps(items))
    return path


def test_reports_from_the_cache_equal_a_fresh_build_and_the_reader_s(tmp_path, processor):
    path = bad_mixture(tmp_path / "data")

    def report_of() -> dict:
        report = BadSampleReport()
        dataset = load_mixture([Source(str(path))], processor, model_max_length=64, chat_template=CHATML,
                               on_bad_sample="skip", report=report, cache_dir=tmp_path / "cache")
        assert len(dataset) == 2  # "ok" (first) and "fine"
        return report.to_dict()

    fresh, cached = report_of(), report_of()
    assert fresh == cached
    tally = fresh["datasets"][str(path)]
    assert (tally["seen"], tally["kept"], tally["skipped"]) == (6, 3, 4)
    assert tally["reasons"] == {"bad_type": 1, "duplicate_id": 1, "bad_role": 1, "too_long": 1}
    # The one-by-one reader (no tokenizer) refuses the same records for the same reasons, with the same texts.
    reader = BadSampleReport()
    read_records(path, on_bad_sample="skip", report=reader)
    reader_tally = reader.to_dict()["datasets"][str(path)]
    assert reader_tally["examples"] == [e for e in tally["examples"] if e["reason"] != "too_long"]
    with pytest.raises(DataError, match=r"record 1 \(id 'num'\), field 'conversations': expected a list"):
        load_mixture([Source(str(path))], processor, model_max_length=64, chat_template=CHATML,
                     cache_dir=tmp_path / "cache")


def test_several_processes_build_the_same_cache_in_chunks(tmp_path, processor, monkeypatch):
    monkeypatch.setattr(records, "JSONL_CHUNK_BYTES", 300)
    path = dataset_folder(tmp_path, 12, "train.jsonl", fmt="jsonl")
    lines = path.read_text().splitlines()
    lines[9] = '{"id": "broken", '
    path.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")  # a blank line 6 too
    assert len(records.plan_chunks(path)) > 2

    def build(num_proc: int):
        report = BadSampleReport()
        dataset = load_mixture([Source(str(path))], processor, model_max_length=128, on_bad_sample="skip",
                               report=report, cache_dir=tmp_path / f"cache{num_proc}", num_proc=num_proc)
        return [dataset[i]["input_ids"].tolist() for i in range(len(dataset))], report.to_dict()

    one, two = build(1), build(2)
    assert one == two
    (example,) = one[1]["datasets"][str(path)]["examples"]
    assert "line 11" in example["message"] and "record 10" in example["message"]  # the blank line counts
    assert len(one[0]) == 11


def test_json_lists_are_read_in_chunks_like_a_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(records, "JSON_CHUNK_RECORDS", 3)
    path = dataset_folder(tmp_path, 8)
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2, ensure_ascii=False))  # non-ASCII bytes
    assert len(records.plan_chunks(path)) == 3
    read = read_records(path)
    expected = json.loads(path.read_text())
    assert [r.id for r in read] == [item["id"] for item in expected]
    assert [r.messages[1]["content"] for r in read] == [item["conversations"][1]["value"] for item in expected]


def test_parquet_image_bytes_come_from_the_cache(tmp_path, processor):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 200, 0)).save(buffer, format="PNG")
    rows = [{"id": f"p{i}", "image": {"bytes": buffer.getvalue(), "path": f"{i}.png"},
             "conversations": json.dumps(qa("green"))} for i in range(3)]
    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    dataset = load_mixture([Source(str(path))], processor, model_max_length=128, cache_dir=tmp_path / "cache")
    assert len(dataset) == 3 and dataset[2]["pixel_values"].shape[0] == 1


def with_missing_image(root: Path, position: int, n: int = 20) -> Path:
    path = dataset_folder(root, n)
    (root / f"{position}.png").unlink()
    return path


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_missing_image_is_found_when_its_sample_is_loaded(tmp_path, processor, policy):
    path = with_missing_image(tmp_path, 18)  # past the first images looked at before training
    dataset = load_mixture([Source(str(path))], processor, model_max_length=128, on_bad_sample=policy,
                           cache_dir=tmp_path / "cache")
    assert len(dataset) == 20
    assert "pixel_values" in dataset[17]
    if policy == "error":
        with pytest.raises(DataError, match=r"record 18 \(id 'r18'\), field 'image': image file not found: '18.png'"):
            dataset[18]
    else:
        item = dataset[18]
        assert [e["reason"] for e in item["data_errors"]] == ["missing_image"]
        assert "record 18 (id 'r18'), field 'image': image file not found: '18.png'" in item["data_errors"][0]["message"]
        assert item["input_ids"].tolist() == dataset[19]["input_ids"].tolist()  # the next sample, served instead


def test_first_images_are_looked_at_before_training(tmp_path, processor):
    path = with_missing_image(tmp_path, 2)
    with pytest.raises(DataError, match=r"record 2 \(id 'r2'\), field 'image': image file not found"):
        load_mixture([Source(str(path))], processor, model_max_length=128, cache_dir=tmp_path / "cache")
    wrong_root = tmp_path / "elsewhere"
    wrong_root.mkdir()
    with pytest.raises(DataError, match="none of the first 16 images can be used .is image_root right.."):
        load_mixture([Source(str(path), image_root=str(wrong_root))], processor, model_max_length=128,
                     on_bad_sample="skip", cache_dir=tmp_path / "cache")


def test_data_check_opens_every_image_and_writes_a_report(tmp_path, parts):
    path = with_missing_image(tmp_path / "data", 18)
    (tmp_path / "data" / "7.png").write_bytes(b"not a png")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "model": {"vision": parts[0], "llm": parts[1]}, "output_dir": str(tmp_path / "out"),
        "data": [{"path": str(path)}],
    }))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "fusevlm.cli", "data", "check", str(recipe), "--num-proc", "2",
                           "--out", str(tmp_path / "report.json"), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    tally = report["datasets"][str(path)]
    assert report["skipped"] == 2 and tally["reasons"] == {"missing_image": 1, "bad_image": 1}
    assert (tally["seen"], tally["kept"]) == (20, 18)
    messages = sorted(e["message"] for e in tally["examples"])
    assert "record 18 (id 'r18'), field 'image': image file not found: '18.png'" in messages[0]
    assert "record 7 (id 'r7'), field 'image[0] (7.png)': not a recognised image file" in messages[1]
    assert "2 skipped (20 records read)" in done.stdout
