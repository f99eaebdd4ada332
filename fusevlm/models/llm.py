"""Language models: any ``AutoModelForCausalLM``. No per-family code lives here, on purpose."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AddedToken,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)


def load_llm(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    **hub_kwargs: Any,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer from a hub name or a local folder.

    ``trust_remote_code`` stays off unless the caller asks: a checkpoint's own Python never runs by default.
    ``model_kwargs`` go to the model's ``from_pretrained`` only (e.g. a ``quantization_config``).
    """
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=dtype or "auto", trust_remote_code=trust_remote_code, **hub_kwargs,
        **(model_kwargs or {}),
    )
    tokenizer = AutoTokenizer.from_pretrained(
        str(name_or_path), trust_remote_code=trust_remote_code, **hub_kwargs
    )
    return model, tokenizer


def add_image_token(
    tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel, image_token: str = "<image>"
) -> int:
    """Make ``image_token`` one special token of the tokenizer and give the LM an embedding row for it.

    Also gives a tokenizer without a pad token one (its EOS), since batches need padding.
    Returns the image token id.
    """
    if image_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(image_token, special=True, normalized=False)], special_tokens=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    image_token_id = tokenizer.convert_tokens_to_ids(image_token)
    rows = model.get_input_embeddings().weight.shape[0]
    if image_token_id >= rows:
        # The new input row is never read (the splice overwrites it). Both new rows start at the mean of the old
        # ones: deterministic (two builds give the same weights) and a tame logit for a token never predicted.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for matrix in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                           if m is not None}.values():
                matrix.weight[rows:] = matrix.weight[:rows].mean(dim=0)
    return image_token_id
