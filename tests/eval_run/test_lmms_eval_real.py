"""The real lmms-eval (0.7) drives a fusevlm model by name, through its Python API and its command line.

Two local tasks (lmms-eval's own task YAML, data saved with ``datasets``): five generated questions whose targets
are, for three of them, the answer the model gives when asked directly (through ``fusevlm eval``'s generation) and,
for two, something it does not say; and four multiple-choice questions whose gold option is, for two, the one the
model finds likeliest (scored in this file by hand from the logits) and, for the other two, the least likely.
lmms-eval must report exactly 3/5 and 2/4, question by question: an adapter that returned log-probabilities
instead of lmms-eval's losses would have it pick the least likely option (its multiple choice takes the argmin).

lmms-eval 0.7.0-0.7.3 cannot run a multiple-choice task to the end for any model: its evaluator passes every
response through ``unwrap_generation_output``, which turns the ``(loss, is_greedy)`` pairs into text, and the
task's scoring then fails to unpack them. So the multiple-choice task is scored by lmms-eval's own task object
(``process_results``) on the adapter's results, and a test pins that upstream behaviour: when it is fixed, that
test fails and the task can join the ``simple_evaluate`` run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from eval_run_helpers import COLORS
from PIL import Image

from fusevlm.eval.generate import generate_answers
from fusevlm.eval.runner import load_model, make_prompt

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("lmms_eval") is None,
    reason="lmms-eval is not installed: pip install -e '.[lmms]' (after a torchvision that pairs with your torch; "
    "README, 'lmms-eval')",
)

QUESTION = "What color is it?"
OPTIONS = ["red", "green", "blue", "yellow"]
NEW_TOKENS = 6
STOP = "<never said>"

UTILS = '''
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"]


def doc_to_choice(doc):
    return list(doc["options"])


def doc_to_gold(doc):
    return doc["gold"]


def exact(doc, results):
    return {"exact": float(results[0].strip() == doc["answer"])}
'''

GENERATION_TASK = f'''
task: fusevlm_gen
dataset_path: {{data}}
dataset_kwargs:
  load_from_disk: true
test_split: gen
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {NEW_TOKENS}
  until: ["{STOP}"]
  do_sample: false
process_results: !function utils.exact
metric_list:
  - metric: exact
    aggregation: mean
    higher_is_better: true
'''

CHOICE_TASK = '''
task: fusevlm_mc
dataset_path: {data}
dataset_kwargs:
  load_from_disk: true
test_split: mc
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_choice: !function utils.doc_to_choice
doc_to_target: !function utils.doc_to_gold
metric_list:
  - metric: acc
'''


@torch.no_grad()
def option_losses(model, processor, image, question: str) -> list[float]:
    """Each option's mean token loss after the prompt, by hand: lmms-eval asks for " " + option (its delimiter)."""
    prompt = make_prompt(question, image, processor.image_token)
    encoded = processor.encode_chat(prompt.messages, prompt.images, add_generation_prompt=True)
    losses = []
    for option in OPTIONS:
        target = processor.tokenizer(" " + option, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([encoded["input_ids"] + target])
        log_probs = model(input_ids=ids, pixel_values=encoded["pixel_values"]).logits[0].float().log_softmax(-1)
        picked = [log_probs[len(encoded["input_ids"]) - 1 + i, token] for i, token in enumerate(target)]
        losses.append(-float(sum(picked)) / len(target))
    return losses


@pytest.fixture(scope="module")
def tasks(tiny_model: Path, tmp_path_factory):
    """The two tasks' folder (for --include_path) and the scores lmms-eval must report, per question."""
    from datasets import Dataset, DatasetDict
    from datasets import Image as ImageFeature

    root = tmp_path_factory.mktemp("lmms-tasks")
    model, processor = load_model(tiny_model)
    images = [Image.new("RGB", (20, 20), color) for color in COLORS]

    said = generate_answers(model, processor, [make_prompt(QUESTION, image, processor.image_token)
                                               for image in images[:5]], max_new_tokens=NEW_TOKENS, progress=False)
    assert all(STOP not in answer for answer in said)
    gen = [{"question": QUESTION, "image": image, "answer": answer if i < 3 else f"not {answer!r}"}
           for i, (image, answer) in enumerate(zip(images[:5], said, strict=True))]
    expected_gen = [1.0, 1.0, 1.0, 0.0, 0.0]

    mc, expected_mc = [], []
    for i, image in enumerate(images[:4]):
        losses = option_losses(model, processor, image, QUESTION)
        likeliest, least = losses.index(min(losses)), losses.index(max(losses))
        assert likeliest != least
        mc.append({"question": QUESTION, "image": image, "options": OPTIONS, "gold": likeliest if i < 2 else least})
        expected_mc.append(1.0 if i < 2 else 0.0)

    features = {"gen": gen, "mc": mc}
    data = DatasetDict({split: Dataset.from_list(rows).cast_column("image", ImageFeature())
                        for split, rows in features.items()})
    data.save_to_disk(str(root / "data"))
    (root / "utils.py").write_text(textwrap.dedent(UTILS))
    (root / "fusevlm_gen.yaml").write_text(GENERATION_TASK.format(data=root / "data"))
    (root / "fusevlm_mc.yaml").write_text(CHOICE_TASK.format(data=root / "data"))
    return root, {"fusevlm_gen": ("exact", expected_gen), "fusevlm_mc": ("acc", expected_mc)}


def check(results: dict, samples: dict, expected: dict) -> None:
    for task, (metric, per_question) in expected.items():
        assert results[task][f"{metric},none"] == pytest.approx(sum(per_question) / len(per_question)), task
        got = [s[metric] for s in sorted(samples[task], key=lambda s: s["doc_id"])]
        assert got == per_question, task


def offline_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def test_simple_evaluate_resolves_fusevlm_by_name_and_scores_its_own_answers(tiny_model, tasks, tmp_path,
                                                                              monkeypatch):
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    for key, value in offline_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    root, expected = tasks
    output = simple_evaluate(model="fusevlm", model_args=f"pretrained={tiny_model},batch_size=2",
                             tasks=["fusevlm_gen"], task_manager=TaskManager(include_path=str(root)),
                             log_samples=True)
    check(output["results"], output["samples"], {"fusevlm_gen": expected["fusevlm_gen"]})


def test_lmms_eval_multiple_choice_scoring_picks_the_option_the_model_finds_likeliest(tiny_model, tasks):
    from lmms_eval.models import get_model
    from lmms_eval.tasks import TaskManager, get_task_dict

    root, expected = tasks
    lm = get_model("fusevlm").create_from_arg_string(f"pretrained={tiny_model},batch_size=2")
    task = get_task_dict(["fusevlm_mc"], TaskManager(include_path=str(root)))["fusevlm_mc"]
    lm.task_dict["fusevlm_mc"] = task.dataset  # what the evaluator does before sending requests
    task.build_all_requests()
    results = lm.loglikelihood(task.instances)
    per_doc: dict[int, list] = {}
    for instance, result in sorted(zip(task.instances, results, strict=True), key=lambda x: (x[0].doc_id, x[0].idx)):
        per_doc.setdefault(instance.doc_id, []).append(result)
    docs = task.test_docs()
    scores = [task.process_results(docs[doc_id], per_doc[doc_id])["acc"] for doc_id in sorted(per_doc)]
    assert scores == expected["fusevlm_mc"][1]


def test_lmms_eval_0_7_turns_loglikelihood_results_into_text():
    """The upstream behaviour that keeps the multiple-choice task out of simple_evaluate (see the module doc)."""
    from lmms_eval.api.instance import unwrap_generation_output

    assert unwrap_generation_output((0.5, True))[0] == "(0.5, True)"


def test_the_lmms_eval_command_runs_fusevlm_by_name(tiny_model, tasks, tmp_path):
    root, expected = tasks
    out = tmp_path / "out"
    command = [sys.executable, "-m", "lmms_eval", "--model", "fusevlm",
               "--model_args", f"pretrained={tiny_model}", "--batch_size", "2", "--tasks", "fusevlm_gen",
               "--include_path", str(root), "--output_path", str(out), "--log_samples"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=offline_env(tmp_path))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    # lmms-eval 0.7 exits 0 even when the model is not found: the results file is the evidence
    found = sorted(out.rglob("*_results.json"))
    assert len(found) == 1, (found, run.stdout[-3000:] + run.stderr[-3000:])
    results = json.loads(found[0].read_text())["results"]
    (log,) = out.rglob("*_samples_fusevlm_gen.jsonl")
    samples = {"fusevlm_gen": [json.loads(line) for line in log.read_text().splitlines()]}
    check(results, samples, {"fusevlm_gen": expected["fusevlm_gen"]})
