"""Load a fusevlm model folder strictly: every weight the config describes must come from the folder.

``from_pretrained`` on its own initialises whatever the weights file lacks and drops what it has extra, with a
printed report: a folder whose ``config.json`` was edited (another projector) or whose weights come from another
model would load as a partly random model and answer nonsense. Serving and ``init_from`` training use this
instead, and refuse such a folder with the names of what does not fit.
"""

from __future__ import annotations

import os
from typing import Any

_SHOWN = 6


class WeightsMismatchError(ValueError):
    """A model folder whose weights do not cover, or do not fit, the model its config describes."""


def load_model_folder(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``FuseVLMForConditionalGeneration.from_pretrained(path, **kwargs)``, refused when any weight is missing,
    unexpected or of the wrong shape. Quantised loads (``quantization_config``) are not checked: their
    parameters are replaced on load by design."""
    from .models.vlm import FuseVLMForConditionalGeneration

    if kwargs.get("quantization_config") is not None:
        return FuseVLMForConditionalGeneration.from_pretrained(path, **kwargs)
    model, info = FuseVLMForConditionalGeneration.from_pretrained(path, output_loading_info=True, **kwargs)
    problems = []
    for label, key in (("missing", "missing_keys"), ("unexpected", "unexpected_keys"), ("wrong shape", "mismatched_keys")):
        names = sorted(str(item[0] if isinstance(item, tuple) else item) for item in info.get(key) or ())
        if names:
            more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            problems.append(f"{label}: {', '.join(names[:_SHOWN])}{more}")
    if problems:
        raise WeightsMismatchError(
            f"{path}: the weights do not fit the model its config.json describes ({'; '.join(problems)}); "
            "was config.json edited, or were another model's weights copied in?"
        )
    return model
