"""recipes/codefuse-vlm-14b/README.md: every command in it runs, as written, on a tiny stand-in of the release
(issue 16, item 6). The commands are read from the README itself and run from a folder laid out as its paths say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from seed_files import seed_projector_state, write_qwen_v1_llm, write_release, write_seed_lora

from fusevlm.serve.engine import Engine
from fusevlm.templates import CODEFUSE_QWEN

README = Path(__file__).resolve().parents[2] / "recipes" / "codefuse-vlm-14b" / "README.md"
EVAL_RUN = Path(__file__).resolve().parents[1] / "eval_run"
if str(EVAL_RUN) not in sys.path:
    sys.path.insert(0, str(EVAL_RUN))

from eval_run_helpers import make_gqa, make_mmbench, make_textvqa, save_jpg  # noqa: E402
from scoring_builders import vqa_answers, write_json  # noqa: E402


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """The README's shell commands, continuation lines joined."""
    return [line for block in blocks("bash") for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def write_benchmarks(data: Path) -> None:
    """Stand-ins of the six benchmarks' official files at the README's paths."""
    shutil.copy(make_mmbench(data / "en").data, data / "MMBench_DEV_EN.tsv")
    shutil.copy(make_mmbench(data / "cn").data, data / "MMBench_DEV_CN.tsv")
    make_gqa(data / "gqa")
    make_textvqa(data / "textvqa", n=3)
    questions = [{"question_id": 1, "image_id": 42, "question": "What is the man wearing?"},
                 {"question_id": 2, "image_id": 7, "question": "Is the light on?"}]
    annotations = [{"question_id": q["question_id"], "image_id": q["image_id"], "question_type": "what",
                    "answer_type": "other", "multiple_choice_answer": "red", "answers": vqa_answers("red*10")}
                   for q in questions]
    write_json(data / "vqav2/v2_OpenEnded_mscoco_val2014_questions.json",
               {"data_subtype": "val2014", "task_type": "Open-Ended", "questions": questions})
    write_json(data / "vqav2/v2_mscoco_val2014_annotations.json",
               {"data_subtype": "val2014", "annotations": annotations})
    for q in questions:
        save_jpg(data / f"coco/val2014/COCO_val2014_{q['image_id']:012d}.jpg", (200, 30, 30))
    vizwiz = [{"image": f"VizWiz_val_{i:08d}.jpg", "question": "What is this?", "answerable": 1,
               "answer_type": "other", "answers": vqa_answers("soup*10")} for i in range(2)]
    write_json(data / "vizwiz/val.json", vizwiz)
    for entry in vizwiz:
        save_jpg(data / "vizwiz/val" / entry["image"], (30, 30, 200))


@pytest.fixture(scope="module")
def workspace(vocab_file, tmp_path_factory):
    """A folder with everything the README's paths name: the release (its LLM answering "A" to everything, so chat
    and eval finish fast), a photo, benchmark files, a LoRA run."""
    root = tmp_path_factory.mktemp("recipe")
    write_release(root / "models/CodeFuse-VLM-14B", vocab_file, answers_a=True)
    Image.new("RGB", (40, 30), (20, 160, 40)).save(root / "photo.jpg")
    write_benchmarks(root / "data")
    base, _ = write_qwen_v1_llm(root / "models/Qwen-14B-Chat-VL", vocab_file)
    write_seed_lora(root / "runs/qwen-vl-14b-lora-sft", base,
                    ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.w2"], non_lora={})
    (root / "runs/qwen-vl-14b-cross-attn").mkdir(parents=True)
    torch.save({f"transformer.mm_projector.{k}": v for k, v in seed_projector_state("cross_attn").items()},
               root / "runs/qwen-vl-14b-cross-attn/mm_projector.bin")
    return root


def test_every_command_in_the_recipe_readme_runs_as_written(workspace, monkeypatch):
    ran = []
    for command in commands():
        words = command.split()
        assert words[0] == "fusevlm", command
        stdin = "What is in the picture?\n/quit\n" if words[1] == "chat" else None
        result = subprocess.run([sys.executable, "-m", "fusevlm.cli", *words[1:]], cwd=workspace, input=stdin,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
        ran.append((words[1], result.stdout))
    assert [name for name, _ in ran] == ["init", "chat", "eval", "export", "init"]

    model = workspace / "out/codefuse-vlm-14b"
    # the folder says it came from the seed: chat, eval and serve all prompt it in the seed's format
    engine = Engine.load(model)
    assert engine.processor.chat_template == CODEFUSE_QWEN
    assert ran[1][1].splitlines()[1:] == ["> A", "> "]  # help, then the answer after the prompt, then a prompt
    table = (workspace / "results/codefuse-vlm-14b/scores.md").read_text()
    for name in ("mmbench", "mmbench_cn", "vqav2", "gqa", "textvqa", "vizwiz"):
        assert name in table
        assert json.loads((workspace / "results/codefuse-vlm-14b" / name / "scores.json").read_text())
    exported = json.loads((workspace / "out/codefuse-vlm-14b-qwen-vl/config.json").read_text())
    assert exported["visual"]["output_dim"] == exported["hidden_size"]
    assert (workspace / "out/my-codefuse-lora/config.json").is_file()

    # the README's Python snippet, run from the same folder
    monkeypatch.chdir(workspace)
    scope: dict = {}
    exec(blocks("python")[0], scope)  # noqa: S102 - the README's own text
    assert scope["context_len"] == 1024 and scope["processor"].chat_template == CODEFUSE_QWEN
