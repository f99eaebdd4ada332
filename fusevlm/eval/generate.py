"""Batched greedy generation: conversations in, answer strings out, through the processor's one encoding path."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..processing import FuseVLMProcessor


@dataclass
class Prompt:
    messages: list[dict[str, Any]]  # ending on a user turn; "<image>" placeholders in the text
    images: list[Image.Image] = field(default_factory=list)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """End-of-sequence ids: the tokenizer's EOS and ChatML's ``<|im_end|>`` when the vocabulary has it.

    Evaluation and serving both stop on these, so served and evaluated answers end alike.
    """
    candidates = (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted({i for i in candidates if i is not None and i != tokenizer.unk_token_id})


def encode_prompts(processor: FuseVLMProcessor, prompts: Sequence[Prompt]) -> dict[str, torch.Tensor]:
    """Left-padded batch of generation prompts (the training encoding, plus the assistant header)."""
    encoded = [processor.encode_chat(p.messages, p.images, add_generation_prompt=True) for p in prompts]
    longest = max(len(e["input_ids"]) for e in encoded)
    pad = processor.tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), longest), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(encoded), longest), dtype=torch.long)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        input_ids[row, longest - n :] = torch.tensor(e["input_ids"])
        attention_mask[row, longest - n :] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    pixels = [e["pixel_values"] for e in encoded if "pixel_values" in e]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    return batch


@torch.inference_mode()
def generate_answers(
    model: Any,
    processor: FuseVLMProcessor,
    prompts: Sequence[Prompt],
    *,
    batch_size: int = 16,
    max_new_tokens: int = 32,
    progress: bool = True,
) -> list[str]:
    """Greedy answers, in order. Deterministic: no sampling, and padding never changes a prompt's answer."""
    model.eval()
    tokenizer = processor.tokenizer
    stop_ids = stop_token_ids(tokenizer)
    answers: list[str] = []
    batches = range(0, len(prompts), batch_size)
    for start in tqdm(batches, desc="generating", disable=not progress):
        batch = {k: v.to(model.device) for k, v in encode_prompts(processor, prompts[start : start + batch_size]).items()}
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids or None,
            pad_token_id=tokenizer.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers
