"""BadSampleReport: counts per dataset and reason, examples, merge, summary and JSON."""

from __future__ import annotations

import io
import json
import logging

from PIL import Image

from fusevlm.data.errors import DataError, ImageError
from fusevlm.data.records import read_records
from fusevlm.data.report import BadSampleReport


def qa(question="<image>\nQ?", answer="A."):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def write_dataset(folder, name, items):
    buffer = io.BytesIO()
    Image.new("RGB", (2, 2)).save(buffer, format="PNG")
    (folder / "a.png").write_bytes(buffer.getvalue())
    path = folder / name
    path.write_text(json.dumps(items))
    return path


def mixed_datasets(tmp_path):
    first = write_dataset(
        tmp_path,
        "first.json",
        [
            {"id": "a", "image": "a.png", "conversations": qa()},
            {"id": "b", "image": "gone.png", "conversations": qa()},
            {"id": "c", "image": "gone.png", "conversations": qa()},
            {"id": "d", "image": "a.png", "conversations": qa(answer="")},
        ],
    )
    second = write_dataset(
        tmp_path,
        "second.json",
        [
            {"id": "x", "image": "a.png", "conversations": qa()},
            {"id": "x", "image": "a.png", "conversations": qa()},
        ],
    )
    return first, second


def test_counts_per_dataset_and_reason(tmp_path):
    first, second = mixed_datasets(tmp_path)
    report = BadSampleReport()
    kept = read_records(first, on_bad_sample="skip", report=report) + read_records(
        second, on_bad_sample="skip", report=report
    )
    assert [r.id for r in kept] == ["a", "x"]
    assert report.skipped == 4
    assert report.reasons(str(first)) == {"missing_image": 2, "empty_turn": 1}
    assert report.reasons(str(second)) == {"duplicate_id": 1}
    assert report.reasons() == {"missing_image": 2, "empty_turn": 1, "duplicate_id": 1}
    assert {k: report.datasets[str(first)][k] for k in ("seen", "kept", "skipped")} == {
        "seen": 4,
        "kept": 1,
        "skipped": 3,
    }
    example = report.datasets[str(first)]["examples"][0]
    assert example == {
        "source": str(first),
        "index": 1,
        "id": "b",
        "field": "image",
        "reason": "missing_image",
        "message": example["message"],
    }
    assert "first.json" in example["message"] and "record 1" in example["message"]


def test_examples_are_capped_per_reason():
    report = BadSampleReport(max_examples=2)
    for index in range(5):
        report.add("d.json", DataError("bad", source="d.json", index=index, field="id", reason="bad_type"))
    report.add("d.json", DataError("empty", source="d.json", index=9, reason="empty_turn"))
    examples = report.datasets["d.json"]["examples"]
    assert [e["index"] for e in examples] == [0, 1, 9]
    assert report.reasons("d.json") == {"bad_type": 5, "empty_turn": 1}


def test_merge_adds_counts_and_examples():
    ours, theirs = BadSampleReport(), BadSampleReport()
    ours.add_read("a.json", seen=10, kept=9)
    ours.add("a.json", DataError("x", source="a.json", index=1, reason="bad_json"))
    theirs.add_read("a.json", seen=5, kept=4)
    theirs.add("a.json", DataError("y", source="a.json", index=2, reason="bad_json"))
    theirs.add("b.json", ImageError("z", source="img.png", reason="bad_image"))
    assert ours.merge(theirs) is ours
    assert ours.datasets["a.json"]["seen"] == 15 and ours.datasets["a.json"]["kept"] == 13
    assert ours.reasons("a.json") == {"bad_json": 2}
    assert ours.reasons("b.json") == {"bad_image": 1}
    assert ours.skipped == 3
    assert len(ours.datasets["a.json"]["examples"]) == 2
    assert theirs.skipped == 2  # merge leaves the other report alone


def test_summary_names_datasets_reasons_and_an_example(tmp_path):
    first, second = mixed_datasets(tmp_path)
    report = BadSampleReport()
    read_records(first, on_bad_sample="skip", report=report)
    read_records(second, on_bad_sample="skip", report=report)
    text = report.summary()
    assert text.splitlines()[0] == "bad samples: 4 skipped (6 records read)"
    assert f"{first}: 3 skipped of 4 read (empty_turn 1, missing_image 2)" in text
    assert f"{second}: 1 skipped of 2 read (duplicate_id 1)" in text
    assert "e.g." in text and "record 1 (id 'b')" in text


def test_clean_report_summary():
    report = BadSampleReport()
    report.add_read("ok.json", seen=3, kept=3)
    assert report.summary() == "bad samples: 0 skipped (3 records read)"


def test_json_round_trip_and_save(tmp_path):
    first, _ = mixed_datasets(tmp_path)
    report = BadSampleReport()
    read_records(first, on_bad_sample="skip", report=report)
    data = json.loads(report.to_json())
    assert data["skipped"] == 3
    assert data["datasets"][str(first)]["reasons"] == {"missing_image": 2, "empty_turn": 1}
    out = tmp_path / "out" / "data_report.json"
    out.parent.mkdir()
    report.save(out)
    assert json.loads(out.read_text()) == data
    again = BadSampleReport.from_dict(data)
    assert again.to_dict() == report.to_dict()
    assert again.datasets is not data["datasets"]


def test_skips_without_a_report_are_logged(tmp_path, caplog):
    first, _ = mixed_datasets(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fusevlm.data.records"):
        read_records(first, on_bad_sample="skip")
    assert "3 skipped" in caplog.text and "missing_image 2" in caplog.text


def test_error_policy_leaves_the_report_untouched_by_the_failing_dataset(tmp_path):
    first, _ = mixed_datasets(tmp_path)
    report = BadSampleReport()
    try:
        read_records(first, report=report)
    except DataError as err:
        assert err.reason == "missing_image"
    else:
        raise AssertionError("expected a DataError")
    assert report.datasets == {}
