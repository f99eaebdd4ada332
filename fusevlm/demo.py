"""``fusevlm demo``: train a tiny VLM from scratch on CPU and show that its answers come from the image.

Every step uses the public code paths: ``fusevlm.data.synthetic`` writes the data, ``train_tokenizer`` the
tokenizer, the parts are saved as ordinary checkpoint folders and composed by ``build_vlm`` inside ``fusevlm
train``'s own ``train(recipe)`` (align, then instruct), and the evaluation is batched greedy generation.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .data import synthetic
from .data.tokenizer import train_tokenizer


@dataclass(frozen=True)
class DemoSize:
    num_align: int
    num_train: int
    num_eval: int
    align_epochs: float
    instruct_epochs: float
    hidden: int
    vision_layers: int
    llm_layers: int


FULL = DemoSize(num_align=2000, num_train=12000, num_eval=800, align_epochs=1, instruct_epochs=4, hidden=128,
                vision_layers=3, llm_layers=3)
FAST = DemoSize(num_align=400, num_train=2400, num_eval=160, align_epochs=1, instruct_epochs=3, hidden=96,
                vision_layers=2, llm_layers=2)
IMAGE_SIZE = 64
PATCH = 8
BATCH = 32


def build_parts(parts: Path, data: Path, size: DemoSize) -> dict[str, Any]:
    """A byte-level BPE tokenizer trained on the corpus, a small CLIP-style ViT and a small Llama, as folders."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    llm_dir, vision_dir = parts / "llm", parts / "vision"
    tokenizer = train_tokenizer(synthetic.training_texts(data), llm_dir, vocab_size=512)
    # 1/sqrt(width) init: with the usual 0.02, a from-scratch tower -> projector -> LLM path sits on a long
    # plateau before it learns shape (measured; see shared NOTES).
    init = 1 / math.sqrt(size.hidden)
    torch.manual_seed(0)
    vision = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=size.hidden, intermediate_size=2 * size.hidden, num_hidden_layers=size.vision_layers,
        num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH, initializer_range=init,
    ))
    # Position embeddings at the scale of a patch's content embedding (std ~1 here, not `init`): at 1/14 of it,
    # where an object sits stayed invisible to the LLM - position and grounding at chance after 1000 steps; at the
    # same scale both are ~0.9 by then (measured).
    torch.nn.init.normal_(vision.embeddings.position_embedding.weight, std=1.0)
    vision.save_pretrained(vision_dir)
    LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden, intermediate_size=3 * size.hidden,
        num_hidden_layers=size.llm_layers, num_attention_heads=4, num_key_value_heads=4,
        max_position_embeddings=256, initializer_range=init, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )).save_pretrained(llm_dir)
    # A tower trained from scratch: read its last layer, every layer paid for is used (NOTES). Pixel shuffle by 4
    # makes each quadrant of the 8x8 patch grid one LLM token, so an object (it stays in its quadrant) is one token,
    # and a step is faster than with 16 image tokens (127 vs 145 ms at 2 threads, measured).
    return {"vision": {"path": str(vision_dir), "feature_layer": -1},
            "projector": {"type": "pixel_shuffle", "factor": 4}, "llm": str(llm_dir)}


def stage_recipe(out: Path, data: Path, model: dict[str, Any], stage: str, size: DemoSize) -> dict[str, Any]:
    images = str(data / "images")
    common = {
        "output_dir": str(out / stage),
        "model_max_length": 128,
        "per_device_train_batch_size": BATCH,
        "weight_decay": 0.0,
        "lr_scheduler_type": "cosine",
        "logging_steps": 10,
        "save_strategy": "no",
        "seed": 0,
        "dataloader_num_workers": 0,
        "report_to": "none",
    }
    if stage == "align":
        return {**common, "model": model, "stage": "align", "template": "plain",
                "data": [{"path": str(data / "align.json"), "image_root": images, "task": "caption"}],
                # Gentle: the LLM is random here, so a projector fitted to it is a bad start. At 2e-3 the instruct
                # stage after it reached 0.34 teacher-forced accuracy by step 1000; without an align stage, 0.64.
                "learning_rate": 2e-4, "num_train_epochs": size.align_epochs, "warmup_steps": 0.05}
    # A plain token-mean loss at 8e-4. Measured on an earlier demo (multi-object scenes; overall held-out accuracy):
    # lr 8e-4 0.37, 1.5e-3 0.31, the per-sample MFT loss at 1.5e-3 0.28 and at 3e-3 0.18. On single-object scenes 1.2e-3
    # was no better and 1.6e-3 on the tower alone, or a per-sample mean, worse (teacher-forced, 1875 steps).
    return {**common, "model": {"init_from": str(out / "align")}, "stage": "instruct", "train_vision": True,
            "data": [{"path": str(data / "train.json"), "image_root": images}],
            "learning_rate": 8e-4, "num_train_epochs": size.instruct_epochs, "warmup_steps": 0.05}


def evaluate(model_dir: Path, data: Path, batch_size: int = 64) -> list[dict[str, Any]]:
    """Greedy answers on the held-out split, with the image and with a blank one (the blind baseline)."""
    from .eval.generate import Prompt, generate_answers
    from .models.vlm import FuseVLMForConditionalGeneration
    from .processing import FuseVLMProcessor

    model = FuseVLMForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = FuseVLMProcessor.from_pretrained(model_dir)
    records = synthetic.load_split(data, "eval")
    blank = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE),
                      tuple(int(255 * m) for m in processor.image_processor.image_mean))
    seeing, blind = [], []
    for record in records:
        question = [{"role": "user", "content": record["conversations"][0]["value"]}]
        image = Image.open(data / "images" / record["image"]).convert("RGB")
        seeing.append(Prompt(question, [image]))
        blind.append(Prompt(question, [blank]))
    answers = generate_answers(model, processor, seeing, batch_size=batch_size, max_new_tokens=16)
    blind_answers = generate_answers(model, processor, blind, batch_size=batch_size, max_new_tokens=16)
    results = []
    for record, answer, blind_answer in zip(records, answers, blind_answers, strict=True):
        reference = record["conversations"][1]["value"]
        results.append({
            "id": record["id"], "task": record["task"], "reference": reference, "answer": answer,
            "correct": synthetic.answers_match(record["task"], answer, reference),
            "blind_answer": blind_answer,
            "blind_correct": synthetic.answers_match(record["task"], blind_answer, reference),
        })
    return results


def summarize(results: list[dict[str, Any]], chance: dict[str, float]) -> dict[str, Any]:
    tasks: dict[str, dict[str, Any]] = {}
    for task in sorted({r["task"] for r in results}):
        rows = [r for r in results if r["task"] == task]
        tasks[task] = {
            "n": len(rows),
            "accuracy": sum(r["correct"] for r in rows) / len(rows),
            "blind_accuracy": sum(r["blind_correct"] for r in rows) / len(rows),
            "chance": chance.get(task),
        }
    overall = {
        "n": len(results),
        "accuracy": sum(r["correct"] for r in results) / len(results),
        "blind_accuracy": sum(r["blind_correct"] for r in results) / len(results),
    }
    return {"tasks": tasks, "overall": overall}


def format_report(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<12}{'n':>6}{'accuracy':>11}{'blind':>9}{'chance':>9}"]
    for task, row in summary["tasks"].items():
        chance = f"{row['chance']:.3f}" if row["chance"] is not None else "-"
        lines.append(f"{task:<12}{row['n']:>6}{row['accuracy']:>11.3f}{row['blind_accuracy']:>9.3f}{chance:>9}")
    overall = summary["overall"]
    lines.append(f"{'all':<12}{overall['n']:>6}{overall['accuracy']:>11.3f}{overall['blind_accuracy']:>9.3f}")
    return "\n".join(lines)


def plot_stages(out: Path) -> Path:
    """Both stages' training losses on one figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, stage in zip(axes, ("align", "instruct"), strict=True):
        history = [h for h in json.loads((out / stage / "log_history.json").read_text()) if "loss" in h]
        ax.plot([h["step"] for h in history], [h["loss"] for h in history])
        ax.set_title(f"{stage} stage")
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
    fig.tight_layout()
    path = out / "loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: str | Path = "out/demo", fast: bool = False) -> dict[str, Any]:
    """Data -> tokenizer -> parts -> align -> instruct -> held-out evaluation -> report.json, loss.png, model."""
    from .train.recipe import recipe_from_dict
    from .train.run import train

    size = FAST if fast else FULL
    out = Path(out)
    started = time.time()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = out / "data"
    print(f"[1/5] synthetic data -> {data}")
    meta = synthetic.generate(data, num_train=size.num_train, num_eval=size.num_eval, num_align=size.num_align,
                              image_size=IMAGE_SIZE, seed=0)
    print("[2/5] tokenizer and model parts")
    model = build_parts(out / "parts", data, size)
    timings = {}
    for number, stage in ((3, "align"), (4, "instruct")):
        print(f"[{number}/5] {stage} stage")
        stage_start = time.time()
        train(recipe_from_dict(stage_recipe(out, data, model, stage, size), source=f"demo:{stage}"))
        timings[stage] = round(time.time() - stage_start, 1)
    print("[5/5] held-out evaluation, with and without the image")
    eval_start = time.time()
    results = evaluate(out / "instruct", data)
    timings["eval"] = round(time.time() - eval_start, 1)
    summary = summarize(results, meta["chance"])
    report = {
        "mode": "fast" if fast else "full",
        "model_dir": str(out / "instruct"),
        **summary,
        "seconds": {**timings, "total": round(time.time() - started, 1)},
        "targets": check_targets(summary, fast),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "answers.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_stages(out)
    print(format_report(summary))
    for line in report["targets"]["notes"]:
        print(line)
    print(f"total {report['seconds']['total']} s; model: {out / 'instruct'}; report: {out / 'report.json'}")
    return report


def check_targets(summary: dict[str, Any], fast: bool) -> dict[str, Any]:
    """The demo's promises, checked and stated in the report rather than hidden."""
    overall = summary["overall"]
    beats_blind = overall["accuracy"] >= 2 * overall["blind_accuracy"]
    notes = [f"overall accuracy {overall['accuracy']:.3f} vs blind {overall['blind_accuracy']:.3f}: "
             f"{'at least' if beats_blind else 'LESS than'} 2x the blind baseline"]
    met = {"beats_blind_2x": beats_blind}
    if not fast:
        met["overall_80"] = overall["accuracy"] >= 0.8
        for task in ("color", "shape"):
            if task in summary["tasks"]:
                met[f"{task}_90"] = summary["tasks"][task]["accuracy"] >= 0.9
        notes += [f"target {name}: {'met' if ok else 'NOT met'}" for name, ok in met.items() if name != "beats_blind_2x"]
    return {"met": met, "notes": notes}
