"""A small byte-level BPE tokenizer with a ChatML template, trained on a corpus (the demo's tokenizer).

The demo trains its LLM from scratch, so it also trains its tokenizer: a few hundred tokens cover the synthetic
dataset's vocabulary, which keeps the embedding table and the softmax tiny. The result is an ordinary
`PreTrainedTokenizerFast` folder that `AutoTokenizer.from_pretrained` loads, with:

- special tokens `<|endoftext|>` (eos), `<|pad|>` (pad, distinct from eos so masking padding never masks an eos),
  `<|im_start|>`, `<|im_end|>` and `<image>` (one id, never merged with its neighbours);
- a Qwen-style ChatML template (no default system prompt) whose assistant turns sit in `{% generation %}` blocks,
  so `apply_chat_template(..., return_assistant_tokens_mask=True)` marks the answer and its `<|im_end|>`.

A chat model built on it should stop generating at `<|im_end|>` (as Qwen2-Instruct does): put
`im_end_id` first in the generation config's `eos_token_id`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS: tuple[str, ...] = (EOS_TOKEN, PAD_TOKEN, IM_START, IM_END, IMAGE_TOKEN)

# ChatML as Qwen2 writes it, minus the default system prompt (it would cost every demo sample ~10 tokens).
# Content may be a string or a list of {"type": "image"} / {"type": "text", "text": ...} parts. The assistant's
# `<|im_end|>` is inside the generation block (the model must learn to stop); the newline after it is not.
CHAT_TEMPLATE = (
    "{%- set nl = '\\n' -%}"  # newlines as expressions: `-%}` / `{%-` would trim literal ones
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for part in content -%}"
    "{%- if part['type'] == 'image' -%}<image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "<|im_start|>assistant{{ nl }}{% generation %}{{ render(message['content']) }}<|im_end|>{% endgeneration %}{{ nl }}"
    "{%- else -%}"
    "<|im_start|>{{ message['role'] }}{{ nl }}{{ render(message['content']) }}<|im_end|>{{ nl }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant{{ nl }}{%- endif -%}"
)

# Words the template itself writes; they join the corpus so each becomes a token of its own.
_TEMPLATE_WORDS = ("system", "user", "assistant")


def _corpus(texts: Iterable[str]) -> Iterator[str]:
    """The texts with special-token strings cut out (BPE must not learn merges across `<image>` and friends)."""
    for text in texts:
        for token in SPECIAL_TOKENS:
            text = text.replace(token, "\n")
        yield text
    yield from _TEMPLATE_WORDS


def train_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of `vocab_size` tokens (specials included) on `texts`, save it to `out_dir`.

    Byte-level means any text still encodes (no unknown token); merges come from the corpus. Returns the saved
    tokenizer; `AutoTokenizer.from_pretrained(out_dir)` gives back the same ids and template.
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size must be at least {len(alphabet) + len(SPECIAL_TOKENS)} (256 bytes + "
            f"{len(SPECIAL_TOKENS)} special tokens), got {vocab_size}"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant-token mask relies on.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(texts), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Named extra specials become attributes: tokenizer.image_token / tokenizer.image_token_id, as in Llava.
        extra_special_tokens={"image_token": IMAGE_TOKEN, "im_start_token": IM_START, "im_end_token": IM_END},
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
