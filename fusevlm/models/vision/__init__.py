"""Vision encoders: a registry of families, each one file in this folder (imported here, so registered)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

from .base import (
    VISION_ENCODERS,
    VisionEncoder,
    checkpoint_config_dict,
    get_vision_encoder_class,
    register_vision_encoder,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

VisionSource = str | Path | dict[str, Any] | list[Any]


def build_vision_encoder(spec: dict[str, Any]) -> VisionEncoder:
    """A randomly initialised encoder from a saved spec (``FuseVLMConfig.vision_config``)."""
    if "encoder" not in spec:
        raise ValueError(f"vision spec has no 'encoder' field: {spec}")
    return get_vision_encoder_class(spec["encoder"])(spec)


def detect_encoder(path: str | Path, **hub_kwargs: Any) -> str:
    """Which registered family a checkpoint folder or hub name belongs to, from its files (config.json, mostly)."""
    for name, cls in VISION_ENCODERS.items():
        if cls.accepts_folder(path):
            return name
    config_dict = checkpoint_config_dict(path, **hub_kwargs)
    for name, cls in VISION_ENCODERS.items():
        if cls.accepts_checkpoint(config_dict):
            return name
    known = ", ".join(sorted(VISION_ENCODERS))
    raise ValueError(
        f"{path}: config.json has model_type {config_dict.get('model_type')!r}, which no vision encoder accepts "
        f"(registered: {known}); name the encoder explicitly: {{encoder: NAME, path: {path}}}"
    )


def load_vision_encoder(source: VisionSource, **hub_kwargs: Any) -> VisionEncoder:
    """Load a pretrained encoder from a registry name, a hub name, a local folder, a spec dict, or a list (fused).

    * ``"clip"`` - the family's default hub checkpoint;
    * ``"openai/clip-vit-large-patch14-336"`` or ``"/models/clip"`` - the family is read from config.json;
    * ``{"encoder": "siglip", "path": ..., "feature_layer": -2, "feature_select": "patch"}`` - explicit;
    * ``[a, b]`` - a fused encoder of the members, in order.
    """
    if isinstance(source, list):
        return _load_fused(source, **hub_kwargs)
    spec = {"path": str(source)} if isinstance(source, str | Path) else dict(source)
    if "encoders" in spec:
        return _load_fused(spec["encoders"], **hub_kwargs)
    path = spec.pop("path", None) or spec.get("encoder")
    if path is None:
        raise ValueError(f"vision spec needs a 'path' or an 'encoder': {source}")
    name = spec.pop("encoder", None)
    if name is None and str(path) in VISION_ENCODERS:
        name = str(path)
    if name is not None:
        cls = get_vision_encoder_class(name)
        if str(path) == name:
            path = cls.default_checkpoint
    else:
        cls = get_vision_encoder_class(detect_encoder(path, **hub_kwargs))
    return cls.from_pretrained(path, spec, **hub_kwargs)


def _load_fused(sources: list[Any], **hub_kwargs: Any) -> VisionEncoder:
    from .fused import FusedEncoder

    members = [load_vision_encoder(s, **hub_kwargs) for s in sources]
    common = members[0].image_size
    for member in members[1:]:
        # Run every member at the first one's resolution; see fused.py for the rule.
        member.spec["image_size"] = common
        if hasattr(member, "run_image_size"):
            member.run_image_size = common
    return FusedEncoder.from_members(members)


__all__ = [
    "VISION_ENCODERS",
    "VisionEncoder",
    "build_vision_encoder",
    "detect_encoder",
    "load_vision_encoder",
    "register_vision_encoder",
]
