"""Chat templates (Jinja, as transformers uses them) and the assistant-token mask that decides what is trained.

Every built-in marks assistant content with ``{% generation %}``, so
``apply_chat_template(..., return_assistant_tokens_mask=True)`` tells which tokens are trained: the assistant's
content and its end-of-turn token, nothing else. A tokenizer's own template is used when a recipe names none;
most hub templates have no generation marks, and for those the mask is found by rendering growing prefixes of
the conversation (see ``assistant_char_spans``).
"""

from __future__ import annotations

from typing import Any

# LLaVA's alignment format: the image, then the caption, no chat markup; the user's words are dropped.
PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<image>' * message['content'].count('<image>') }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)

VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# LLaVA-1.5's conv_vicuna_v1: "<system> USER: q ASSISTANT: a</s>USER: ..."
VICUNA_V1 = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    '{% else %}{{ "' + VICUNA_SYSTEM + '" }}{% endif %}'
    "{{ ' ' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'USER: ' + message['content'] + ' ' }}"
    "{% elif message['role'] == 'assistant' %}{{ 'ASSISTANT: ' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

# Qwen's ChatML. The assistant's <|im_end|> is inside the generation block: the model must learn to stop.
CHATML = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Llama-2-chat: "<s>[INST] <<SYS>>\nsys\n<</SYS>>\n\nq [/INST] a </s><s>[INST] q2 [/INST]"
LLAMA2 = (
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set rest = messages %}{% endif %}"
    "{% for message in rest %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}"
    "{{ (bos_token if bos_token is defined else '') + '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' + message['content'] + ' [/INST]' }}"
    "{% else %}{{ (bos_token if bos_token is defined else '') + '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ ' ' }}{% generation %}{{ message['content'] + ' ' + eos_token }}{% endgeneration %}"
    "{% endif %}"
    "{% endfor %}"
)

# Llama-3-instruct headers; <|eot_id|> ends every turn.
LLAMA3 = (
    "{% if bos_token is defined %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# CodeFuse-VLM-14B's format: Qwen-VL-Chat's ChatML with its fixed system line and each image as
# "Picture N:<img>IMAGE</img>\n" ahead of the user's words, as the seed built prompts for Qwen LLMs in training
# (llava/train/train.py, preprocess_multimodal + preprocess_qwen) and evaluation (llava/eval/*_vqa.py). The image
# tokens sit between Qwen-VL's <img> and </img> tokens, where the seed's model put its 256 resampler outputs.
CODEFUSE_QWEN_SYSTEM = "You are a helpful assistant."
CODEFUSE_QWEN = (
    "{% set pictures = namespace(count=0) %}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set rest = messages[1:] %}"
    "{% else %}{% set system = '" + CODEFUSE_QWEN_SYSTEM + "' %}{% set rest = messages %}{% endif %}"
    "{{ '<|im_start|>system\\n' + system + '<|im_end|>\\n' }}"
    "{% for message in rest %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% for _ in range(message['content'].count('<image>')) %}{% set pictures.count = pictures.count + 1 %}"
    "{{ 'Picture ' + pictures.count|string + ':<img><image></img>\\n' }}{% endfor %}"
    "{{ message['content'].replace('<image>\\n', '').replace('\\n<image>', '').replace('<image>', '') }}"
    "{{ '<|im_end|>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

BUILTIN_TEMPLATES: dict[str, str] = {
    "plain": PLAIN,
    "vicuna_v1": VICUNA_V1,
    "chatml": CHATML,
    "llama2": LLAMA2,
    "llama3": LLAMA3,
    "codefuse_qwen": CODEFUSE_QWEN,
}


def get_template(name: str) -> str:
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; built-ins: {', '.join(sorted(BUILTIN_TEMPLATES))}")
    return BUILTIN_TEMPLATES[name]


def has_generation_marks(template: str) -> bool:
    return "{% generation %}" in template or "{%- generation %}" in template


def assistant_char_spans(render: Any, messages: list[dict[str, Any]], text: str) -> list[tuple[int, int]]:
    """Character spans of assistant replies in ``text`` for templates without generation marks.

    For each assistant turn k, the render of ``messages[:k]`` with a generation prompt must be a prefix of the
    render of ``messages[:k+1]``; what the turn adds is the reply (trailing whitespace excluded, so the template's
    separator is not trained). A template for which this does not hold cannot be masked safely: error.
    """
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:k], add_generation_prompt=True)
        upto = render(messages[: k + 1], add_generation_prompt=False)
        if not upto.startswith(before) or not text.startswith(upto):
            raise ValueError(
                "the chat template does not render conversations prefix by prefix, so the assistant turns cannot "
                "be located; add {% generation %} marks to it or pick a built-in template "
                f"({', '.join(sorted(BUILTIN_TEMPLATES))})"
            )
        end = len(upto.rstrip())
        spans.append((len(before), end))
    return spans
