"""What both harness adapters share: prompts with images, the greedy answers, log-likelihoods."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..generate import Prompt, generate_answers
from ..runner import open_image


def vlm_prompt(text: str, images: Sequence[Any], image_token: str = "<image>") -> Prompt:
    """A user turn holding ``images``: at the text's own placeholders, else one placeholder line each in front.

    The second case is LLaVA-1.5's layout (``"<image>\\n" + question``), the one ``fusevlm eval`` uses, so
    a harness that passes the bare question asks exactly what ``fusevlm eval`` asks.
    """
    images = [open_image(image, "harness visual") for image in images]
    placed = text.count(image_token)
    if placed == 0 and images:
        text = "\n".join([image_token] * len(images)) + "\n" + text
    elif placed != len(images):
        raise ValueError(f"the prompt holds {placed} {image_token} placeholder(s) but {len(images)} image(s) came with it")
    return Prompt([{"role": "user", "content": text}], images)


def greedy_answers(model: Any, processor: Any, prompts: Sequence[Prompt], max_new_tokens: int) -> list[str]:
    """The same batched greedy generation as ``fusevlm eval`` (left padding, EOS / <|im_end|> stops)."""
    return generate_answers(model, processor, prompts, batch_size=len(prompts), max_new_tokens=max_new_tokens,
                            progress=False)


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the first of the stop strings (the harnesses' ``until``), as lm-eval does."""
    for stop in stops:
        if stop:
            text = text.split(stop, 1)[0]
    return text


@torch.inference_mode()
def continuation_loss(model: Any, processor: Any, prompt: Prompt, continuation: str) -> tuple[float, bool]:
    """``(mean -log p(continuation token | prompt, earlier tokens), whether greedy decoding would produce them)``.

    The convention of lmms-eval's own models (their ``loglikelihood`` returns the cross-entropy loss of the
    continuation), on which its multiple-choice scoring relies: it picks the option with the *lowest* value. The
    prompt is encoded as for generation (with the assistant header); the continuation's tokens are appended as
    they are, so the chat template's end-of-turn token is not part of the score.
    """
    encoded = processor.encode_chat(prompt.messages, prompt.images, add_generation_prompt=True)
    target = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not target:
        raise ValueError(f"the continuation {continuation!r} has no tokens to score")
    device = model.device
    input_ids = torch.tensor([encoded["input_ids"] + target], device=device)
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "pixel_values" in encoded:
        inputs["pixel_values"] = encoded["pixel_values"].to(device)
    # The logits at position t predict token t + 1: the continuation is predicted from one position earlier.
    logits = model(**inputs).logits[0, -len(target) - 1 : -1].float()
    wanted = torch.tensor(target, device=device)
    loss = torch.nn.functional.cross_entropy(logits, wanted).item()
    return float(loss), bool((logits.argmax(-1) == wanted).all())
