import json
from pathlib import Path

import yaml
from convert_helpers import load

from fusevlm.data.convert import TASKS
from fusevlm.data.convert.__main__ import main

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "codefuse-vlm-14b" / "data.yaml"


def write_tsv(path: Path, n: int) -> Path:
    path.write_text("".join(f"caption {i}\thttp://x/{i}.jpg\n" for i in range(n)))
    return path


def test_cli_converts_and_prints_stats(tmp_path, capsys):
    tsv = write_tsv(tmp_path / "t.tsv", 5)
    out = tmp_path / "out" / "cc3m.json"
    rc = main(["cc3m", "--input", str(tsv), "--output", str(out), "--num-samples", "3", "--seed", "4",
               "--no-progress"])
    assert rc == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["written"] == 3 and stats["read"] == 5 and stats["seed"] == 4
    assert len(load(out)) == 3


def test_cli_accepts_leading_convert_and_several_inputs(tmp_path, capsys):
    a, b = write_tsv(tmp_path / "a.tsv", 2), write_tsv(tmp_path / "b.tsv", 3)
    out = tmp_path / "o.json"
    assert main(["convert", "cc3m", "--input", str(a), str(b), "--output", str(out)]) == 0
    assert [r["id"] for r in load(out)] == ["a_000000000", "a_000000001", "b_000000000", "b_000000001",
                                           "b_000000002"]
    assert main(["cc3m", "--input", str(a), "--input", str(b), "--output", str(out)]) == 0
    assert len(load(out)) == 5


def test_cli_reports_bad_input_and_bad_options(tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab\n")
    assert main(["cc3m", "--input", str(bad), "--output", str(tmp_path / "o.json")]) == 2
    err = capsys.readouterr().err
    assert "bad.tsv: record 0" in err
    assert not (tmp_path / "o.json").exists()
    tsv = write_tsv(tmp_path / "t.tsv", 1)
    assert main(["cc3m", "--input", str(tsv), "--output", str(tmp_path / "o.json"), "--split", "train"]) == 2
    assert "option split does not apply to cc3m" in capsys.readouterr().err
    assert main(["cc3m", "--input", str(tmp_path / "missing.tsv"), "--output", str(tmp_path / "o.json")]) == 2
    assert "missing.tsv: no such file" in capsys.readouterr().err


def test_recipe_lists_the_seed_mixture():
    entries = yaml.safe_load(RECIPE.read_text())["data"]
    assert len(entries) == 9
    for e in entries:
        assert set(e) == {"path", "image_root", "task", "num_samples"}, e
        assert e["task"] in TASKS and e["path"].endswith(".json")
    counts = [(Path(e["path"]).stem, e["task"], e["num_samples"]) for e in entries]
    assert counts == [
        ("synthdog_en", "ocr", 800_000), ("synthdog_zh", "ocr", 800_000),
        ("cc3m", "caption", 600_000), ("cc3m", "caption", 600_000), ("sbu", "caption", 850_000),
        ("vg_vqa", "vqa", 500_000), ("vg_regions", "grounding", 500_000),
        ("vg_objects", "grounded_caption", 500_000), ("ocr_vqa", "vqa", 500_000),
    ]
    synthdog = entries[0]
    assert synthdog["image_root"] == f"{synthdog['path'][:-len('.json')]}_images"  # the converter's default


def test_cli_writes_webdataset_shards_that_stream_back(tmp_path, capsys):
    from PIL import Image

    from fusevlm.data.streaming import decode_value, raw_stream

    tsv = write_tsv(tmp_path / "t.tsv", 5)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(images / f"{i:09d}.jpg")
    out = tmp_path / "shards"
    assert main(["cc3m", "--input", str(tsv), "--output", str(out), "--image-root", str(images), "--to",
                 "webdataset", "--shard-size", "2", "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["shards"] == 3 and sorted(p.name for p in out.iterdir()) == [
        "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    stream, kind = raw_stream(out)
    rows = list(stream)
    assert kind == "webdataset" and [json.loads(r["json"]["conversations"])[1]["content"] for r in rows] == [
        f"caption {i}" for i in range(5)]
    assert rows[3]["image0.jpg"]["bytes"] == (images / "000000003.jpg").read_bytes()
    assert decode_value('{"b": {"__bytes__": "\\u00ff"}}') == {"b": b"\xff"}
