"""``fusevlm eval`` arguments, several benchmarks in one table, and bad input that names what is wrong."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path

import pytest
from eval_run_helpers import Bench, FakeGenerator, make_mmbench, oracle

from fusevlm.eval.cli import add_eval_arguments, parse_named_paths, run_eval
from fusevlm.eval.runner import EvalError, evaluate, evaluate_many
from fusevlm.eval.scoring import ScoringError


def cli(*argv: str) -> argparse.Namespace:
    return add_eval_arguments(argparse.ArgumentParser()).parse_args(list(argv))


# ---- the command line -------------------------------------------------------------------------------------------


def test_one_benchmark_from_the_command_line(tiny_model: Path, gqa: Bench, tmp_path: Path, capsys):
    out = tmp_path / "out"
    code = run_eval(cli("--model", str(tiny_model), "--benchmark", "gqa", "--data", str(gqa.data),
                        "--images", str(gqa.images), "--out", str(out), "--limit", "2", "--batch-size", "2",
                        "--max-new-tokens", "2", "--no-progress"))
    assert code == 0
    printed = capsys.readouterr().out
    assert "| gqa |" in printed and "scored 2 of 3 questions" in printed
    assert json.loads((out / "scores.json").read_text())["n_scored"] == 2
    assert len(json.loads((out / "gqa_answers.json").read_text())) == 2


def test_several_benchmarks_write_one_table(fake_generate, textvqa: Bench, gqa: Bench, mmbench: Bench, tmp_path: Path):
    generator = fake_generate(FakeGenerator(oracle(textvqa, gqa, mmbench)))
    out = tmp_path / "out"
    code = run_eval(cli("--model", "unused", "--benchmarks", "textvqa,gqa,mmbench",
                        "--data", f"textvqa={textvqa.data},gqa={gqa.data}", "--data", f"mmbench={mmbench.data}",
                        "--images", f"textvqa={textvqa.images},gqa={gqa.images}", "--out", str(out),
                        "--rules", "evalai", "--no-progress"))
    assert code == 0 and len(generator.asked) == 5 + 3 + 7
    combined = json.loads((out / "scores.json").read_text())
    assert [r["benchmark"] for r in combined["results"]] == ["textvqa", "gqa", "mmbench"]
    assert [r["rules"] for r in combined["results"]] == ["evalai", "official", "official"]
    assert all(r["score"] == 100.0 for r in combined["results"])
    table = (out / "scores.md").read_text()
    assert all(f"| {name} |" in table for name in ("textvqa", "gqa", "mmbench"))
    for name, answers_file in [("textvqa", "textvqa_answers.json"), ("gqa", "gqa_answers.json"),
                               ("mmbench", "mmbench_submission.tsv")]:
        assert (out / name / answers_file).is_file() and (out / name / "scores.json").is_file()


def test_named_paths_split_only_at_benchmark_names():
    names = ["gqa", "textvqa"]
    got = parse_named_paths(["gqa=/d/a,b.json,textvqa=/d/x=1.json"], names, "--data", bare_for_all=False)
    assert got == {"gqa": Path("/d/a,b.json"), "textvqa": Path("/d/x=1.json")}
    assert parse_named_paths(["/coco"], names, "--images", bare_for_all=True) == {"gqa": Path("/coco"),
                                                                                   "textvqa": Path("/coco")}
    with pytest.raises(EvalError, match="with several benchmarks, name each path"):
        parse_named_paths(["/d/q.json"], names, "--data", bare_for_all=False)
    with pytest.raises(EvalError, match="pope is not among the benchmarks"):
        parse_named_paths(["pope=/d/p.json"], names, "--data", bare_for_all=False)
    with pytest.raises(EvalError, match="gqa is given twice"):
        parse_named_paths(["gqa=/a", "gqa=/b"], names, "--data", bare_for_all=False)


def test_command_line_mistakes_are_named(tmp_path: Path, gqa: Bench):
    with pytest.raises(EvalError, match="unknown benchmark 'okvqa'; choose from vqav2"):
        run_eval(cli("--model", "m", "--benchmarks", "gqa,okvqa", "--data", "gqa=x", "--out", str(tmp_path)))
    with pytest.raises(EvalError, match="no data file for textvqa"):
        run_eval(cli("--model", "m", "--benchmarks", "gqa,textvqa", "--data", f"gqa={gqa.data}",
                     "--out", str(tmp_path)))
    with pytest.raises(SystemExit):  # argparse: --benchmark and --benchmarks exclude each other
        cli("--model", "m", "--benchmark", "gqa", "--benchmarks", "gqa", "--data", "x", "--out", "o")


# ---- bad input ----------------------------------------------------------------------------------------------------


def test_missing_images_fail_before_any_generation(fake_generate, textvqa: Bench, tmp_path: Path):
    generator = fake_generate(FakeGenerator())
    (textvqa.images / "img3.jpg").unlink()
    with pytest.raises(EvalError, match=r"textvqa: 1 of 5 images not found: question 103: .*img3\.jpg"):
        evaluate("unused", *textvqa.args, out=tmp_path / "out", progress=False)
    assert generator.calls == []
    with pytest.raises(EvalError, match="images not found"):
        evaluate("unused", textvqa.name, textvqa.data, tmp_path / "nowhere", out=tmp_path / "out", progress=False)


def test_an_undecodable_inline_image_names_its_question(fake_generate, tmp_path: Path):
    fake_generate(FakeGenerator())
    bench = make_mmbench(tmp_path / "mmb", image_for=lambda i: base64.b64encode(b"not an image").decode())
    with pytest.raises(EvalError, match=r"mmbench question 1: cannot decode the image"):
        evaluate("unused", *bench.args, out=tmp_path / "out", progress=False)


def test_unknown_benchmark_rules_and_limit_are_refused(textvqa: Bench, gqa: Bench, tmp_path: Path):
    with pytest.raises(EvalError, match="unknown benchmark 'okvqa'; choose from vqav2, textvqa"):
        evaluate("unused", "okvqa", textvqa.data, out=tmp_path)
    with pytest.raises(EvalError, match="gqa: unknown rule set 'evalai'; choose from official"):
        evaluate("unused", *gqa.args, out=tmp_path, rules="evalai")
    with pytest.raises(EvalError, match="limit must be a positive number"):
        evaluate("unused", *gqa.args, out=tmp_path, limit=0)
    with pytest.raises(EvalError, match="unknown rule set 'evali'"):
        evaluate_many("unused", [gqa.args], out=tmp_path, rules="evali")
    with pytest.raises(EvalError, match="listed twice"):
        evaluate_many("unused", [gqa.args, gqa.args], out=tmp_path)


def test_a_data_file_of_another_benchmark_is_refused(textvqa: Bench, tmp_path: Path):
    with pytest.raises(ScoringError, match="TextVQA_0.5.1_val.json: .*not a GQA question"):
        evaluate("unused", "gqa", textvqa.data, textvqa.images, out=tmp_path)


def test_a_folder_that_is_no_model(fake_generate, textvqa: Bench, tmp_path: Path):
    from fusevlm.eval import runner

    with pytest.raises(EvalError, match="not a model folder"):
        runner.load_model(tmp_path)


def test_images_open_from_paths_bytes_and_base64(tmp_path: Path):
    import io

    from PIL import Image

    from fusevlm.eval.runner import open_image

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(buffer, format="PNG")
    raw = buffer.getvalue()
    path = tmp_path / "red.png"
    path.write_bytes(raw)
    inline = base64.b64encode(raw).decode()
    assert "/" in inline or "+" in inline  # base64's own alphabet must not pass for a path
    for source in (path, str(path), raw, inline):
        image = open_image(source)
        assert (image.size, image.mode, image.getpixel((0, 0))) == ((40, 30), "RGB", (255, 0, 0))
    with pytest.raises(EvalError, match=r"q7: image not found: .*gone\.png"):
        open_image(tmp_path / "gone.png", "q7")


def test_a_split_without_ground_truth_still_leaves_the_file_to_submit(fake_generate, textvqa: Bench, tmp_path: Path):
    content = json.loads(textvqa.data.read_text())
    for entry in content["data"]:
        del entry["answers"]  # like TextVQA's test split
    textvqa.data.write_text(json.dumps(content))
    fake_generate(FakeGenerator())
    out = tmp_path / "out"
    with pytest.raises(EvalError, match=r"wrote the answers file .*textvqa_answers.json, but cannot score it"):
        evaluate("unused", *textvqa.args, out=out, progress=False)
    assert len(json.loads((out / "textvqa_answers.json").read_text())) == 5
