"""`fusevlm demo --fast`: the whole pipeline on CPU, and the model answers from the image."""

import json

from fusevlm import FuseVLMForConditionalGeneration, FuseVLMProcessor
from fusevlm.cli import main


def test_fast_demo_beats_the_blind_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--fast", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["mode"] == "fast"
    tasks = report["tasks"]
    assert {"caption", "color", "shape", "position", "count", "ocr", "grounding", "region"} <= set(tasks)
    for row in tasks.values():
        assert row["n"] > 0 and 0 <= row["accuracy"] <= 1 and 0 <= row["blind_accuracy"] <= 1
    overall = report["overall"]
    assert overall["n"] == sum(row["n"] for row in tasks.values())
    assert overall["accuracy"] > overall["blind_accuracy"]
    assert report["seconds"]["total"] > 0 and set(report["seconds"]) >= {"align", "instruct", "eval", "total"}
    assert (out / "loss.png").stat().st_size > 0
    for stage in ("align", "instruct"):
        assert (out / stage / "loss.png").exists()
    # the final folder is an ordinary model folder
    FuseVLMForConditionalGeneration.from_pretrained(out / "instruct")
    FuseVLMProcessor.from_pretrained(out / "instruct")
    printed = capsys.readouterr().out
    assert "blind" in printed and "all" in printed
