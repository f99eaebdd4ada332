"""`fusevlm demo --fast`: the whole pipeline on CPU, and the model answers from the image."""

import json
import sys
from pathlib import Path

from fusevlm import FuseVLMForConditionalGeneration, FuseVLMProcessor
from fusevlm.cli import main

sys.path.insert(0, str(Path(__file__).parent.parent / "eval_run"))
from eval_run_helpers import make_gqa, make_mmbench, make_textvqa  # noqa: E402


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

    # the demo model through `fusevlm eval` on three official formats, into one table
    benches = [make_textvqa(tmp_path / "textvqa"), make_gqa(tmp_path / "gqa"), make_mmbench(tmp_path / "mmbench")]
    data = ",".join(f"{b.name}={b.data}" for b in benches)
    images = ",".join(f"{b.name}={b.images}" for b in benches if b.images)
    scores_dir = tmp_path / "scores"
    assert main(["eval", "--model", str(out / "instruct"), "--benchmarks", "textvqa,gqa,mmbench", "--data", data,
                 "--images", images, "--out", str(scores_dir), "--max-new-tokens", "8", "--no-progress"]) == 0
    results = json.loads((scores_dir / "scores.json").read_text())["results"]
    assert [r["benchmark"] for r in results] == ["textvqa", "gqa", "mmbench"]
    # Every question asked (an empty answer reads back from MMBench's sheet as unanswered, so n_scored may be lower).
    assert all(r.get("n_asked", r["n_scored"]) == r["n_total"] > 0 for r in results)
    assert (scores_dir / "textvqa" / "textvqa_answers.json").exists()
    assert (scores_dir / "mmbench" / "mmbench_submission.tsv").exists()
