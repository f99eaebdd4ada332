"""The vision-encoder contract and its registry.

A vision encoder maps ``pixel_values (B, 3, H, W)`` to ``features (B, N, D)``. Everything the rest of the system
needs to know about it (hidden size ``D``, patch grid, ``N``, the image processor) is known from its *spec* alone,
before any forward. A spec is the JSON-able dict stored in ``FuseVLMConfig.vision_config``::

    {"encoder": "clip", "config": {...the HF vision config...}, "feature_layer": -2, "feature_select": "patch"}

Adding an encoder family is one registered subclass in one file of this folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

FEATURE_SELECTS = ("patch", "cls_patch")

VISION_ENCODERS: dict[str, type[VisionEncoder]] = {}


def register_vision_encoder(name: str):
    """Class decorator: make an encoder available under ``name`` in recipes and specs."""

    def wrap(cls: type[VisionEncoder]) -> type[VisionEncoder]:
        if name in VISION_ENCODERS:
            raise ValueError(
                f"vision encoder {name!r} is registered twice ({VISION_ENCODERS[name]} and {cls})"
            )
        cls.name = name
        VISION_ENCODERS[name] = cls
        return cls

    return wrap


def get_vision_encoder_class(name: str) -> type[VisionEncoder]:
    if name not in VISION_ENCODERS:
        raise ValueError(f"unknown vision encoder {name!r}; available: {', '.join(sorted(VISION_ENCODERS))}")
    return VISION_ENCODERS[name]


class VisionEncoder(nn.Module):
    """Base class. Subclasses set ``has_cls_token`` and implement the abstract members."""

    name: ClassVar[str] = ""
    has_cls_token: ClassVar[bool] = False
    default_feature_layer: ClassVar[int] = -2
    # The hub checkpoint a bare registry name (e.g. ``vision: clip``) stands for.
    default_checkpoint: ClassVar[str | None] = None

    def __init__(self, spec: dict[str, Any]):
        super().__init__()
        self.spec = self.complete_spec(spec)
        self.feature_layer: int = self.spec["feature_layer"]
        self.feature_select: str = self.spec["feature_select"]

    # ---- spec handling -------------------------------------------------------------------------------------
    @classmethod
    def complete_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate the generic fields of a spec."""
        spec = dict(spec)
        spec["encoder"] = cls.name
        spec.setdefault("feature_layer", cls.default_feature_layer)
        spec.setdefault("feature_select", "patch")
        if spec["feature_select"] not in FEATURE_SELECTS:
            raise ValueError(
                f"vision encoder {cls.name!r}: feature_select must be one of {FEATURE_SELECTS}, "
                f"got {spec['feature_select']!r}"
            )
        if spec["feature_select"] == "cls_patch" and not cls.has_cls_token:
            raise ValueError(f"vision encoder {cls.name!r} has no CLS token; use feature_select='patch'")
        return spec

    @classmethod
    def accepts_checkpoint(cls, config_dict: dict[str, Any]) -> bool:
        """Whether a checkpoint's raw ``config.json`` belongs to this encoder family."""
        return False

    @classmethod
    def accepts_folder(cls, path: str | Path) -> bool:
        """Whether a local folder without a ``config.json`` of its own is this family's (the seed's layouts)."""
        return False

    @classmethod
    def from_pretrained(
        cls, path: str | Path, spec: dict[str, Any] | None = None, **hub_kwargs: Any
    ) -> VisionEncoder:
        """Build the encoder and load its pretrained weights from a local folder or hub name."""
        raise NotImplementedError

    # ---- shape facts, known before any forward -----------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    @property
    def image_size(self) -> int:
        raise NotImplementedError

    @property
    def patch_size(self) -> int:
        raise NotImplementedError

    @property
    def grid(self) -> tuple[int, int]:
        """Patch grid (rows, cols) of one image."""
        side = self.image_size // self.patch_size
        return (side, side)

    @property
    def num_tokens(self) -> int:
        """N: tokens per image handed to the projector."""
        rows, cols = self.grid
        return rows * cols + (1 if self.feature_select == "cls_patch" else 0)

    def default_image_processor(self):
        """An image processor matching this encoder when the checkpoint ships none."""
        raise NotImplementedError

    def select_tokens(self, hidden: torch.Tensor) -> torch.Tensor:
        """Drop the CLS token unless it is asked for (LLaVA's 'default' strategy keeps patches only)."""
        if self.has_cls_token and self.feature_select == "patch":
            return hidden[:, 1:]
        return hidden

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def checkpoint_config_dict(path: str | Path, **hub_kwargs: Any) -> dict[str, Any]:
    """The raw ``config.json`` of a local folder or hub checkpoint, without importing remote code."""
    from transformers import PretrainedConfig

    config_dict, _ = PretrainedConfig.get_config_dict(str(path), **hub_kwargs)
    return config_dict
