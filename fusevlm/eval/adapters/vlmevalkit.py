"""A fusevlm model as a VLMEvalKit model.

VLMEvalKit is optional. When it is importable, :class:`FuseVLM` subclasses ``vlmeval.vlm.base.BaseModel``;
register it in VLMEvalKit's ``vlmeval/config.py``, e.g.
``supported_VLM["fusevlm"] = partial(FuseVLM, model_path="out/instruct")``, and run
``python run.py --model fusevlm --data MMBench_DEV_EN``. Without VLMEvalKit the class stands on a small
base with the same ``generate`` entry point, so it can be driven (and tested) the way the harness does:
``model.generate(message, dataset)`` -> ``generate_inner(message, dataset)``, where ``message`` is a
list of ``{"type": "image" | "text", "value": ...}`` (image values are file paths).

Images and text are interleaved as LLaVA's VLMEvalKit wrapper does (each image becomes ``<image>\\n`` at
its place, texts are joined as given), so ``[image, question]`` is asked exactly as ``fusevlm eval``
asks it. VLMEvalKit builds the prompts (``use_custom_prompt`` is False).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..runner import DEFAULT_MAX_NEW_TOKENS, load_model
from ._common import greedy_answers, vlm_prompt

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

try:  # the real harness, when installed
    from vlmeval.vlm.base import BaseModel as _BaseModel
except ImportError:
    _BaseModel = None

if _BaseModel is None:

    class _BaseModel:  # type: ignore[no-redef]
        """The part of ``vlmeval.vlm.base.BaseModel`` the harness calls: ``generate`` -> ``generate_inner``."""

        INTERLEAVE = False
        allowed_types = ["text", "image"]

        def use_custom_prompt(self, dataset: str) -> bool:
            return False

        def generate(self, message: Any, dataset: str | None = None) -> str:
            items = _as_items(message)
            for item in items:
                if item["type"] not in self.allowed_types:
                    raise ValueError(f"unsupported message part type {item['type']!r}")
            return self.generate_inner(items, dataset)


def _as_items(message: Any) -> list[dict[str, Any]]:
    """VLMEvalKit's accepted message shapes (str, dict, list of str, list of dicts) as a list of dicts."""
    if isinstance(message, str | dict):
        message = [message]
    items = []
    for part in message:
        if isinstance(part, dict):
            if "type" not in part or "value" not in part:
                raise ValueError(f"a message part needs 'type' and 'value': {part!r}")
            items.append(part)
        elif isinstance(part, str):  # like VLMEvalKit: a string naming an image file is an image
            is_image = part.lower().endswith(IMAGE_SUFFIXES) and Path(part).is_file()
            items.append({"type": "image" if is_image else "text", "value": part})
        else:
            raise ValueError(f"a message part must be a str or a dict, got {type(part).__name__}")
    return items


class FuseVLM(_BaseModel):
    """VLMEvalKit model backed by a fusevlm model folder."""

    INTERLEAVE = True  # images may sit anywhere between texts

    def __init__(
        self,
        model_path: str,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        device: str | None = None,
        dtype: str | None = None,
        **unused: Any,
    ) -> None:
        if unused:
            warnings.warn(f"fusevlm VLMEvalKit adapter ignores {sorted(unused)}", stacklevel=2)
        self.model_path = str(model_path)
        self.max_new_tokens = int(max_new_tokens)
        self.model, self.processor = load_model(model_path, device=device, dtype=dtype)

    def generate_inner(self, message: list[dict[str, Any]], dataset: str | None = None) -> str:
        """The greedy answer to one interleaved message."""
        token = self.processor.image_token
        text, images = "", []
        for item in message:
            if item["type"] == "image":
                text += f"{token}\n"
                images.append(item["value"])
            elif item["type"] == "text":
                text += str(item["value"])
            else:
                raise ValueError(f"fusevlm takes text and image parts, not {item['type']!r}")
        return greedy_answers(self.model, self.processor, [vlm_prompt(text, images, token)], self.max_new_tokens)[0]
