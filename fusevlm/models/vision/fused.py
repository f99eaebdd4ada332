"""Several encoders read the same image; their patch features are concatenated on the channel axis.

prismatic-vlms' DINOv2 + SigLIP is the model case. The rules, so that every member yields one grid:

* every member runs at one common input size, the first member's (others interpolate their position
  embeddings), each with its own normalisation: ``pixel_values`` holds 3 channels per member, in order;
* grids that still differ (different patch sizes) are reduced to the smallest grid by adaptive average pooling;
* members keep patch tokens only (a CLS token has no place on a grid).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import VisionEncoder, get_vision_encoder_class, register_vision_encoder


@register_vision_encoder("fused")
class FusedEncoder(VisionEncoder):
    def __init__(self, spec: dict[str, Any], members: list[VisionEncoder] | None = None):
        super().__init__(spec)
        if members is None:
            member_specs = self.spec["encoders"]
            common = self.spec.get("image_size")
            members = [
                get_vision_encoder_class(s["encoder"])({**s, "image_size": common or s.get("image_size")})
                for s in member_specs
            ]
        if len(members) < 2:
            raise ValueError("a fused encoder needs at least two member encoders")
        self.encoders = nn.ModuleList(members)
        self.spec["encoders"] = [m.spec for m in members]
        self.spec["image_size"] = members[0].image_size
        for member in members:
            if member.feature_select != "patch":
                raise ValueError(f"fused encoder: member {member.name!r} must use feature_select='patch'")
            if member.image_size != self.image_size:
                raise ValueError(
                    f"fused encoder: member {member.name!r} runs at {member.image_size}px, not the common "
                    f"{self.image_size}px (build members with spec['image_size'] = the first member's size)"
                )

    @classmethod
    def complete_spec(cls, spec: dict[str, Any]) -> dict[str, Any]:
        spec = dict(spec)
        spec["encoder"] = cls.name
        spec["feature_layer"] = None  # each member has its own
        spec["feature_select"] = "patch"
        return spec

    @classmethod
    def from_members(cls, members: list[VisionEncoder]) -> FusedEncoder:
        return cls(
            {"encoders": [m.spec for m in members], "image_size": members[0].image_size}, members=members
        )

    @property
    def hidden_size(self) -> int:
        return sum(m.hidden_size for m in self.encoders)

    @property
    def image_size(self) -> int:
        return int(self.spec["image_size"])

    @property
    def patch_size(self) -> int:
        return max(m.patch_size for m in self.encoders)

    @property
    def grid(self) -> tuple[int, int]:
        return min((m.grid for m in self.encoders), key=lambda g: g[0] * g[1])

    def default_image_processor(self):
        from ...processing import FusedImageProcessor

        return FusedImageProcessor([m.default_image_processor() for m in self.encoders])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        rows, cols = self.grid
        chunks = pixel_values.split(3, dim=1)
        if len(chunks) != len(self.encoders):
            raise ValueError(
                f"fused encoder expects {3 * len(self.encoders)} channels (3 per member), got {pixel_values.shape[1]}"
            )
        outputs = []
        for member, chunk in zip(self.encoders, chunks, strict=True):
            features = member(chunk)
            if member.grid != (rows, cols):
                r, c = member.grid
                grid = features.transpose(1, 2).reshape(features.shape[0], -1, r, c)
                features = F.adaptive_avg_pool2d(grid, (rows, cols)).flatten(2).transpose(1, 2)
            outputs.append(features)
        return torch.cat(outputs, dim=-1)
