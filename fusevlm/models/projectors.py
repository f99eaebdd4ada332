"""Alignment modules (projectors): vision features ``(B, N, D)`` -> LLM embeddings ``(B, M, H)``.

Every projector knows M, the number of image tokens it emits, from its config alone (``output_tokens``), so the
processor can put exactly M image positions in the text before any forward. A projector config is the JSON-able
dict stored in ``FuseVLMConfig.projector_config``: ``{"type": "mlp2x_gelu", ...options}``.

Adding a projector is one registered subclass here.
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import initialization as init

from .vision.qwen_vl import interpolate_positions

PROJECTORS: dict[str, type[Projector]] = {}


def register_projector(name: str):
    def wrap(cls: type[Projector]) -> type[Projector]:
        cls.name = name
        PROJECTORS[name] = cls
        return cls

    return wrap


def resolve_projector(name: str) -> tuple[type[Projector], dict[str, Any]]:
    """Map a projector name to its class and the options the name implies (``mlp3x_gelu`` -> depth 3)."""
    match = re.fullmatch(r"mlp(\d+)x_gelu", name)
    if match:
        return PROJECTORS["mlp{N}x_gelu"], {"depth": int(match.group(1))}
    if name not in PROJECTORS:
        raise ValueError(f"unknown projector {name!r}; available: {', '.join(sorted(PROJECTORS))} (N >= 1)")
    return PROJECTORS[name], {}


class ProjectorError(ValueError):
    """A projector that cannot fit the chosen encoder and LLM."""


class Projector(nn.Module):
    name: ClassVar[str] = ""

    def __init__(self, in_features: int, out_features: int, grid: tuple[int, int], num_input_tokens: int):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.grid = tuple(grid)
        self.num_input_tokens = num_input_tokens
        self.num_output_tokens = self.output_tokens(grid, num_input_tokens)

    def output_tokens(self, grid: tuple[int, int], num_input_tokens: int) -> int:
        """M for this projector's options; token-preserving projectors return N."""
        return num_input_tokens

    def fusevlm_init(self) -> None:
        """Initialise parameters that generic Linear/LayerNorm initialisation does not cover."""


@register_projector("identity")
class IdentityProjector(Projector):
    def __init__(self, in_features: int, out_features: int, grid: tuple[int, int], num_input_tokens: int):
        if in_features != out_features:
            raise ProjectorError(
                f"projector 'identity' needs the vision hidden size ({in_features}) to equal the LLM hidden size "
                f"({out_features}); use 'linear' or 'mlp2x_gelu'"
            )
        super().__init__(in_features, out_features, grid, num_input_tokens)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


@register_projector("linear")
class LinearProjector(Projector):
    def __init__(self, in_features: int, out_features: int, grid: tuple[int, int], num_input_tokens: int):
        super().__init__(in_features, out_features, grid, num_input_tokens)
        self.linear = nn.Linear(in_features, out_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def gelu_mlp(in_features: int, out_features: int, depth: int) -> nn.Sequential:
    """LLaVA's ``mlp{depth}x_gelu``: Linear, then (GELU, Linear) depth-1 times."""
    if depth < 1:
        raise ProjectorError(f"an MLP projector needs depth >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_features, out_features)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_features, out_features)]
    return nn.Sequential(*layers)


@register_projector("mlp{N}x_gelu")
class MLPProjector(Projector):
    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid: tuple[int, int],
        num_input_tokens: int,
        depth: int = 2,
    ):
        super().__init__(in_features, out_features, grid, num_input_tokens)
        self.mlp = gelu_mlp(in_features, out_features, depth)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(features)


def sincos_2d_positions(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (grid_size**2, embed_dim), as MAE and Qwen-VL's resampler build them."""
    if embed_dim % 4:
        raise ProjectorError(f"2-D sin-cos positions need embed_dim divisible by 4, got {embed_dim}")
    coords = torch.arange(grid_size, dtype=torch.float64)
    # Qwen-VL/MAE use meshgrid(w, h): the first half encodes the column, the second half the row.
    cols, rows = torch.meshgrid(coords, coords, indexing="xy")

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        omega = torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0)
        angles = pos.reshape(-1, 1) * (1.0 / 10000**omega)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


@register_projector("cross_attn")
class CrossAttentionProjector(Projector):
    """Qwen-VL's resampler: M learned queries attend once to the (kv-projected) vision features.

    Queries carry fixed 2-D sin-cos positions of an M-grid; keys carry the same table interpolated to the encoder's
    grid. Then ``ln_post`` and ``x @ proj`` map to the LLM width. Parameter names match Qwen-VL's
    ``attn_pool.*`` / ``ln_post`` / ``proj``, so its weights load as they are.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid: tuple[int, int],
        num_input_tokens: int,
        num_queries: int = 256,
        embed_dim: int | None = None,
        num_heads: int | None = None,
    ):
        self.num_queries = num_queries
        super().__init__(in_features, out_features, grid, num_input_tokens)
        side = math.isqrt(num_queries)
        if side * side != num_queries:
            raise ProjectorError(
                f"cross_attn: num_queries must be a perfect square (2-D positions), got {num_queries}"
            )
        if num_input_tokens != grid[0] * grid[1] or grid[0] != grid[1]:
            raise ProjectorError(
                f"cross_attn interpolates key positions to a square patch grid; the encoder gives {num_input_tokens} "
                f"tokens on a {grid[0]}x{grid[1]} grid (use feature_select='patch')"
            )
        embed_dim = embed_dim or out_features
        num_heads = num_heads or max(1, embed_dim // 128)  # Qwen-VL: 128-wide heads
        if embed_dim % num_heads:
            raise ProjectorError(
                f"cross_attn: embed_dim {embed_dim} is not divisible by num_heads {num_heads}"
            )
        self.embed_dim = embed_dim
        self.register_buffer("pos_embed", sincos_2d_positions(embed_dim, side), persistent=True)
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        # Qwen-VL skips kv_proj when the widths already agree; so do we, to keep its state-dict names.
        self.kv_proj = (
            nn.Linear(in_features, embed_dim, bias=False) if in_features != embed_dim else nn.Identity()
        )
        self.attn = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.ln_q = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=1e-6)
        self.ln_post = nn.LayerNorm(embed_dim, eps=1e-6)
        self.proj = nn.Parameter(torch.empty(embed_dim, out_features))
        self.fusevlm_init()

    def output_tokens(self, grid: tuple[int, int], num_input_tokens: int) -> int:
        return self.num_queries

    def fusevlm_init(self) -> None:
        init.trunc_normal_(self.query, std=0.02)
        init.normal_(self.proj, std=self.embed_dim**-0.5)
        init.copy_(self.pos_embed, sincos_2d_positions(self.embed_dim, math.isqrt(self.num_queries)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        keys_pos = interpolate_positions(self.pos_embed, features.shape[1]).to(features.dtype)
        kv = self.ln_kv(self.kv_proj(features))
        queries = (self.ln_q(self.query) + self.pos_embed.to(self.query.dtype)).expand(
            features.shape[0], -1, -1
        )
        out = self.attn(queries, kv + keys_pos, kv, need_weights=False)[0]
        return self.ln_post(out) @ self.proj


@register_projector("pixel_shuffle")
class PixelShuffleProjector(Projector):
    """Space-to-depth by ``factor`` (r x r neighbouring patches become one token of width D*r*r), then an MLP.

    Cuts image tokens by r**2 (nanoVLM / Idefics3's compression).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid: tuple[int, int],
        num_input_tokens: int,
        factor: int = 2,
        depth: int = 2,
    ):
        self.factor = factor
        rows, cols = grid
        if num_input_tokens != rows * cols:
            raise ProjectorError(
                f"pixel_shuffle needs patch tokens only ({rows}x{cols}={rows * cols}), got {num_input_tokens} "
                f"(use feature_select='patch')"
            )
        if rows % factor or cols % factor:
            raise ProjectorError(
                f"pixel_shuffle: the {rows}x{cols} patch grid is not divisible by factor {factor}"
            )
        super().__init__(in_features, out_features, grid, num_input_tokens)
        self.mlp = gelu_mlp(in_features * factor * factor, out_features, depth)

    def output_tokens(self, grid: tuple[int, int], num_input_tokens: int) -> int:
        return (grid[0] // self.factor) * (grid[1] // self.factor)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, dim = features.shape
        rows, cols = self.grid
        r = self.factor
        x = features.reshape(batch, rows // r, r, cols // r, r, dim)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, (rows // r) * (cols // r), r * r * dim)
        return self.mlp(x)


def build_projector(
    config: dict[str, Any], in_features: int, out_features: int, grid: tuple[int, int], num_input_tokens: int
) -> Projector:
    """Build a projector from ``{"type": name, **options}``; unknown options are an error, not ignored."""
    options = dict(config)
    name = options.pop("type", None)
    if not name:
        raise ValueError("projector_config needs a 'type' (e.g. 'mlp2x_gelu')")
    cls, implied = resolve_projector(name)
    options = {**options, **implied}
    try:
        return cls(in_features, out_features, tuple(grid), num_input_tokens, **options)
    except TypeError as err:
        raise ProjectorError(f"projector {name!r}: bad options {sorted(options)}: {err}") from err
