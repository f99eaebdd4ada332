"""Chat templates (Jinja, as transformers uses them).

Every template marks assistant content with ``{% generation %}`` so that
``apply_chat_template(..., return_assistant_tokens_mask=True)`` tells which tokens are trained. A tokenizer's own
template is used when it has one; these are the built-ins for tokenizers that have none.
"""

from __future__ import annotations

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

BUILTIN_TEMPLATES: dict[str, str] = {"chatml": CHATML}


def get_template(name: str) -> str:
    if name not in BUILTIN_TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; built-ins: {', '.join(sorted(BUILTIN_TEMPLATES))}")
    return BUILTIN_TEMPLATES[name]
