"""The lmms-eval and VLMEvalKit adapters, called the way those harnesses call them, on the tiny real model
(the real lmms-eval drives the adapter in test_lmms_eval_real.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from eval_run_helpers import COLORS, GenerationSpy, save_jpg
from PIL import Image

from fusevlm.eval.adapters import _common
from fusevlm.eval.adapters.lmms_eval import FuseVLM as LmmsFuseVLM
from fusevlm.eval.adapters.vlmevalkit import FuseVLM as VlmEvalFuseVLM
from fusevlm.eval.generate import Prompt, generate_answers
from fusevlm.eval.runner import load_model, make_prompt

QUESTION = "What color is it?\nAnswer the question using a single word or phrase."


def what_evaluate_answers(model_dir: Path, text: str, image, max_new_tokens: int) -> str:
    """The answer ``fusevlm eval`` gives: "<image>\\n" + prompt through the same generation."""
    model, processor = load_model(model_dir)
    prompt = make_prompt(text, image, processor.image_token)
    return generate_answers(model, processor, [prompt], max_new_tokens=max_new_tokens, progress=False)[0]


@pytest.fixture(scope="module")
def lmms(tiny_model: Path) -> LmmsFuseVLM:
    lm = LmmsFuseVLM(pretrained=str(tiny_model), batch_size=2, max_new_tokens=3)
    # what lmms-eval's evaluator does: lm.task_dict[task] = task.dataset (split -> docs)
    docs = [{"image": Image.new("RGB", (20, 20), color), "question": QUESTION} for color in COLORS[:3]]
    lm.task_dict = {"toy": {"test": docs}}
    return lm


def lmms_request(*args) -> SimpleNamespace:
    """An lmms-eval ``Instance`` as a model sees it: only ``.args`` is read."""
    return SimpleNamespace(args=args)


def doc_to_visual(doc: dict) -> list:
    return [doc["image"]]


# ---- lmms-eval --------------------------------------------------------------------------------------------------


def test_lmms_generate_until_answers_as_fusevlm_eval_does(lmms: LmmsFuseVLM, tiny_model: Path):
    requests = [
        lmms_request(QUESTION, {"max_new_tokens": 3, "until": []}, doc_to_visual, 0, "toy", "test"),
        lmms_request(QUESTION, {"max_new_tokens": 2}, doc_to_visual, 1, "toy", "test"),
        lmms_request(QUESTION, {"max_new_tokens": 3, "until": []}, doc_to_visual, 2, "toy", "test"),
    ]
    answers = lmms.generate_until(requests)
    docs = lmms.task_dict["toy"]["test"]
    expected = [what_evaluate_answers(tiny_model, QUESTION, docs[i]["image"], n) for i, n in [(0, 3), (1, 2), (2, 3)]]
    assert answers == expected  # request order kept although the 2-token request ran in its own batch


def test_lmms_generate_until_cuts_at_the_stop_strings(lmms: LmmsFuseVLM, tiny_model: Path, monkeypatch):
    docs = lmms.task_dict["toy"]["test"]
    whole = [what_evaluate_answers(tiny_model, QUESTION, docs[0]["image"], 7),
             generate_answers(lmms.model, lmms.processor, [Prompt([{"role": "user", "content": "<image> first"}],
                                                                   [docs[2]["image"]])], max_new_tokens=7,
                              progress=False)[0]]
    assert all(len(answer) >= 3 for answer in whole), whole  # the untrained model says enough to cut
    stops = [whole[0][1:3], whole[1][2:]]  # a list holding a stop string from the middle, and a bare string
    spy = GenerationSpy()
    monkeypatch.setattr(_common, "generate_answers", spy)
    requests = [
        lmms_request(QUESTION, {"until": ["never in the answer", stops[0]], "max_new_tokens": 7}, doc_to_visual, 0,
                     "toy", "test"),
        lmms_request("<image> first", {"until": stops[1], "max_new_tokens": 7}, doc_to_visual, 2, "toy", "test"),
    ]
    assert lmms.generate_until(requests) == [whole[0].split(stops[0], 1)[0], whole[1].split(stops[1], 1)[0]]
    # no placeholder in the context: one in front, the LLaVA way; an explicit one is kept where it is
    assert spy.asked == ["<image>\n" + QUESTION, "<image> first"]
    assert spy.answered == whole  # what was cut is what the model said
    with pytest.warns(UserWarning, match="greedily"):
        lmms._warned_sampling = False
        lmms.generate_until([lmms_request(QUESTION, {"temperature": 0.7}, doc_to_visual, 0, "toy", "test")])


def test_lmms_loglikelihood_is_the_continuations_mean_token_loss(lmms: LmmsFuseVLM):
    """lmms-eval's convention: its models return the cross-entropy loss, and multiple choice takes the lowest."""
    doc = lmms.task_dict["toy"]["test"][0]
    model, processor = lmms.model, lmms.processor
    prompt = make_prompt(QUESTION, doc["image"], processor.image_token)
    encoded = processor.encode_chat(prompt.messages, prompt.images, add_generation_prompt=True)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([encoded["input_ids"]]), pixel_values=encoded["pixel_values"]).logits
    ranked = logits[0, -1].argsort(descending=True).tolist()
    greedy, other = (processor.tokenizer.decode([t]) for t in (ranked[0], ranked[50]))
    assert processor.tokenizer(greedy, add_special_tokens=False)["input_ids"] == [ranked[0]]
    log_probs = logits[0, -1].float().log_softmax(-1)
    # a two-token continuation, scored by hand: the mean of -log p over its tokens, each given those before it
    def round_trips(ids):
        return processor.tokenizer(processor.tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids

    pair = next([ranked[0], t] for t in ranked[1:] if round_trips([ranked[0], t]))
    with torch.no_grad():
        longer = model(input_ids=torch.tensor([encoded["input_ids"] + pair[:1]]),
                       pixel_values=encoded["pixel_values"]).logits[0, -1].float().log_softmax(-1)
    two_tokens = processor.tokenizer.decode(pair)

    results = lmms.loglikelihood([
        lmms_request(QUESTION, greedy, doc_to_visual, 0, "toy", "test"),
        lmms_request(QUESTION, lambda d: other, doc_to_visual, 0, "toy", "test"),  # doc_to_target as a function
        lmms_request(QUESTION, two_tokens, doc_to_visual, 0, "toy", "test"),
    ])
    (loss_greedy, is_greedy), (loss_other, other_greedy), (loss_pair, pair_greedy) = results
    assert loss_greedy == pytest.approx(-log_probs[ranked[0]].item(), abs=1e-4)
    assert loss_other == pytest.approx(-log_probs[ranked[50]].item(), abs=1e-4)
    assert loss_pair == pytest.approx(-(log_probs[pair[0]] + longer[pair[1]]).item() / 2, abs=1e-4)
    assert is_greedy is True and other_greedy is False and pair_greedy is (longer.argmax().item() == pair[1])
    assert 0 <= loss_greedy < loss_other  # the likelier continuation has the lower value: argmin picks it


def test_lmms_refuses_what_it_cannot_do(lmms: LmmsFuseVLM):
    with pytest.raises(ValueError, match="2 <image> placeholder"):
        lmms.generate_until([lmms_request("<image><image> two?", {}, doc_to_visual, 0, "toy", "test")])
    with pytest.raises(NotImplementedError, match="single-round"):
        lmms.generate_until_multi_round([])
    assert (lmms.rank, lmms.world_size, lmms.batch_size) == (0, 1, 2)


# ---- VLMEvalKit -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vlmeval(tiny_model: Path) -> VlmEvalFuseVLM:
    return VlmEvalFuseVLM(model_path=str(tiny_model), max_new_tokens=3)


def test_vlmevalkit_generate_answers_as_fusevlm_eval_does(vlmeval: VlmEvalFuseVLM, tiny_model: Path, tmp_path: Path):
    image = tmp_path / "img.jpg"
    save_jpg(image, COLORS[1])
    message = [{"type": "image", "value": str(image)}, {"type": "text", "value": QUESTION}]
    answer = vlmeval.generate(message=message, dataset="MMBench_DEV_EN")  # the harness's entry point
    assert answer == vlmeval.generate_inner(message, dataset="MMBench_DEV_EN")
    assert answer == what_evaluate_answers(tiny_model, QUESTION, image, 3)
    assert vlmeval.generate([str(image), QUESTION]) == answer  # VLMEvalKit's list-of-str shape
    assert vlmeval.use_custom_prompt("MMBench_DEV_EN") is False


def test_vlmevalkit_interleaves_images_and_text(vlmeval: VlmEvalFuseVLM, monkeypatch, tmp_path: Path):
    spy = GenerationSpy()
    monkeypatch.setattr(_common, "generate_answers", spy)
    paths = [tmp_path / "a.jpg", tmp_path / "b.jpg"]
    for path, color in zip(paths, COLORS, strict=False):
        save_jpg(path, color)
    message = [{"type": "text", "value": "Left: "}, {"type": "image", "value": str(paths[0])},
               {"type": "text", "value": "Right: "}, {"type": "image", "value": str(paths[1])},
               {"type": "text", "value": "Which is red?"}]
    answer = vlmeval.generate(message)
    text = "Left: <image>\nRight: <image>\nWhich is red?"
    assert spy.asked == [text]
    # the answer the model gives when asked that directly, with the two images in that order
    direct = Prompt([{"role": "user", "content": text}], [Image.open(p).convert("RGB") for p in paths])
    assert answer == generate_answers(vlmeval.model, vlmeval.processor, [direct], max_new_tokens=3, progress=False)[0]
    swapped = Prompt([{"role": "user", "content": text}], [Image.open(p).convert("RGB") for p in paths[::-1]])
    with torch.no_grad():  # the images' order reaches the model: swapping them changes its logits
        a, b = (vlmeval.processor.encode_chat(p.messages, p.images, add_generation_prompt=True) for p in (direct, swapped))
        logits = [vlmeval.model(input_ids=torch.tensor([e["input_ids"]]), pixel_values=e["pixel_values"]).logits
                  for e in (a, b)]
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(ValueError, match="unsupported message part type 'video'"):
        vlmeval.generate([{"type": "video", "value": "clip.mp4"}])
    with pytest.raises(Exception, match="image not found: .*missing.jpg"):
        vlmeval.generate([{"type": "image", "value": str(tmp_path / "missing.jpg")}, {"type": "text", "value": "?"}])
