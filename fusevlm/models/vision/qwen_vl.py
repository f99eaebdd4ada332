"""Qwen-VL's vision transformer trunk (ViT-bigG: 448 px, patch 14, width 1664, 48 layers, 16 heads).

Our own implementation with the same parameter names as ``transformer.visual.*`` in a Qwen-VL checkpoint, so the
weights load directly. Qwen-VL's resampler (``attn_pool``, ``ln_post``, ``proj``) is not part of the trunk: it is
the ``cross_attn`` projector (``fusevlm/models/projectors.py``), which receives those weights.

Two layouts load: a full Qwen-VL checkpoint (``config.json`` with a ``visual`` section, ``transformer.visual.*``
tensors), and the seed's ``Qwen-VL-visual/`` folder (CodeFuse-MFT-VLM): ``visual_config.json`` plus ``visual.bin``,
the trunk's state dict alone (256 position rows, no resampler; the seed's resampler lives in its projector file).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from ..weights import load_strict, read_weights
from .base import VisionEncoder, checkpoint_config_dict, register_vision_encoder

QWEN_VL_PREFIX = "transformer.visual."
# Keys under the prefix that belong to the resampler, i.e. to the cross_attn projector.
RESAMPLER_PREFIXES = ("attn_pool.", "ln_post.", "proj")
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The seed's Qwen-VL-visual/ folder.
SEED_VISUAL_CONFIG = "visual_config.json"
SEED_VISUAL_WEIGHTS = "visual.bin"
SEED_TRUNK_KEYS = ("heads", "image_size", "layers", "mlp_ratio", "patch_size", "width")
# Also in the seed's visual_config.json, not the trunk's: the LLM's <img> token id, and the size of a resampler the
# seed's trunk does not hold (its resampler is sized by the LLM, in the projector file).
SEED_OTHER_KEYS = ("image_start_id", "output_dim", "n_queries")
SEED_NUM_POSITIONS = 256  # the seed's trunk always holds 256 position rows, resized to the patch grid per forward

DEFAULT_CONFIG = {
    "image_size": 448,
    "patch_size": 14,
    "width": 1664,
    "layers": 48,
    "heads": 16,
    "mlp_ratio": 4.9231,
    "num_positions": 256,
}


def interpolate_positions(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Resize a square table of positions (L, C) to ``num_tokens`` positions, bicubic (Qwen-VL's get_abs_pos)."""
    src, dst = int(math.isqrt(pos.shape[0])), int(math.isqrt(num_tokens))
    if src == dst:
        return pos
    grid = pos.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).flatten(0, 2).to(pos.dtype)


class QwenVisualAttention(nn.Module):
    """Self-attention with a fused qkv projection laid out per head as [q_h, k_h, v_h] (Qwen-VL's layout)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"qwen_vl: width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.head_dim = width // heads
        self.in_proj = nn.Linear(width, 3 * width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        qkv = self.in_proj(x).view(batch, length, self.heads, 3 * self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.split(self.head_dim, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(batch, length, width))


class QwenVisualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.attn = QwenVisualAttention(width, heads)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class QwenVisualTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.resblocks = nn.ModuleList(QwenVisualBlock(width, heads, mlp_ratio) for _ in range(layers))


@register_vision_encoder("qwen_vl")
class QwenVLEncoder(VisionEncoder):
    has_cls_token = False
    # Qwen-VL feeds the resampler its last layer; keep that so Qwen-VL weights reproduce Qwen-VL's features.
    default_feature_layer = -1
    default_checkpoint = "Qwen/Qwen-VL"

    def __init__(self, spec: dict[str, Any]):
        super().__init__(spec)
        cfg = {**DEFAULT_CONFIG, **self.spec.get("config", {})}
        self.spec["config"] = cfg
        self.cfg = cfg
        width, layers = cfg["width"], cfg["layers"]
        if not -layers - 1 <= self.feature_layer <= layers:
            raise ValueError(
                f"qwen_vl: feature_layer {self.feature_layer} is outside 0..{layers} / -1..{-layers - 1}"
            )
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg["patch_size"], stride=cfg["patch_size"], bias=False)
        self.positional_embedding = nn.Parameter(torch.empty(cfg["num_positions"], width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-6)
        self.transformer = QwenVisualTransformer(width, layers, cfg["heads"], cfg["mlp_ratio"])
        self.fusevlm_init()

    def fusevlm_init(self) -> None:
        """Initialise the parameters torch's defaults do not cover (called again by FuseVLM's _init_weights)."""
        from transformers import initialization as init

        init.normal_(self.positional_embedding, std=self.cfg["width"] ** -0.5)

    @property
    def hidden_size(self) -> int:
        return int(self.cfg["width"])

    @property
    def image_size(self) -> int:
        return int(self.spec.get("image_size") or self.cfg["image_size"])

    @property
    def patch_size(self) -> int:
        return int(self.cfg["patch_size"])

    def default_image_processor(self):
        # Qwen-VL resizes straight to a square (bicubic), no crop, OpenAI-CLIP normalisation.
        size = self.image_size
        return CLIPImageProcessorPil(
            size={"height": size, "width": size},
            do_center_crop=False,
            image_mean=OPENAI_CLIP_MEAN,
            image_std=OPENAI_CLIP_STD,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        x = x + interpolate_positions(self.positional_embedding, x.shape[1])
        x = self.ln_pre(x)
        # hidden_states[0] is the embedding output, [i] the output of block i; run only the blocks needed.
        layers = len(self.transformer.resblocks)
        stop = self.feature_layer if self.feature_layer >= 0 else layers + 1 + self.feature_layer
        for block in self.transformer.resblocks[:stop]:
            x = block(x)
        return x

    # ---- loading a Qwen-VL checkpoint ------------------------------------------------------------------------
    @classmethod
    def accepts_checkpoint(cls, config_dict: dict[str, Any]) -> bool:
        return config_dict.get("model_type") == "qwen" and isinstance(config_dict.get("visual"), dict)

    @classmethod
    def accepts_folder(cls, path: str | Path) -> bool:
        return (Path(path) / SEED_VISUAL_CONFIG).is_file()

    @classmethod
    def from_pretrained(
        cls, path: str | Path, spec: dict[str, Any] | None = None, **hub_kwargs: Any
    ) -> QwenVLEncoder:
        """Load the trunk from a Qwen-VL checkpoint (keeping its resampler weights for a ``cross_attn`` projector) or
        from the seed's ``Qwen-VL-visual/`` folder."""
        if cls.accepts_folder(path):
            return cls.from_seed_folder(path, spec)
        config_dict = checkpoint_config_dict(path, **hub_kwargs)
        if not cls.accepts_checkpoint(config_dict):
            raise ValueError(f"{path}: not a Qwen-VL checkpoint (config.json has no 'visual' section)")
        visual_state = read_prefixed_tensors(path, QWEN_VL_PREFIX)
        trunk_state, resampler_state = split_qwen_vl_visual_state(visual_state)
        visual = config_dict["visual"]
        spec = dict(spec or {})
        spec["config"] = {
            key: visual.get(key, DEFAULT_CONFIG[key]) for key in DEFAULT_CONFIG if key != "num_positions"
        }
        spec["config"]["num_positions"] = int(trunk_state["positional_embedding"].shape[0])
        spec.setdefault("source", str(path))
        encoder = cls(spec)
        encoder.load_state_dict(trunk_state, strict=True)
        # What the cross_attn projector needs to rebuild Qwen-VL's resampler exactly.
        output_dim = int(
            visual.get("output_dim", resampler_state["proj"].shape[0] if "proj" in resampler_state else 0)
        )
        encoder.pretrained_projector = {
            "type": "cross_attn",
            "num_queries": int(visual.get("n_queries", 256)),
            "embed_dim": output_dim,
            "num_heads": max(1, output_dim // 128),
            "state_dict": resampler_state,
        }
        encoder.pretrained_image_processor = None
        return encoder

    @classmethod
    def from_seed_folder(cls, path: str | Path, spec: dict[str, Any] | None = None) -> QwenVLEncoder:
        """The seed's ``Qwen-VL-visual/``: ``visual_config.json`` sizes the trunk, ``visual.bin`` must fit it exactly.

        ``encoder.seed_visual_config`` keeps the file's fields (``image_start_id`` is the LLM's ``<img>`` token).
        """
        folder = Path(path)
        config_file = folder / SEED_VISUAL_CONFIG
        try:
            visual = json.loads(config_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file}: not valid JSON ({err})") from err
        missing = [key for key in SEED_TRUNK_KEYS if key not in visual]
        unknown = sorted(set(visual) - set(SEED_TRUNK_KEYS) - set(SEED_OTHER_KEYS))
        if missing or unknown:
            raise ValueError(
                f"{config_file}: " + "; ".join(
                    f"{label}: {', '.join(keys)}" for label, keys in (("missing", missing), ("unknown", unknown)) if keys
                ) + f" (a seed visual_config.json holds {', '.join(sorted(SEED_TRUNK_KEYS + SEED_OTHER_KEYS))})"
            )
        spec = dict(spec or {})
        spec["config"] = {
            "image_size": int(visual["image_size"]),
            "patch_size": int(visual["patch_size"]),
            "width": int(visual["width"]),
            "layers": int(visual["layers"]),
            "heads": int(visual["heads"]),
            "mlp_ratio": float(visual["mlp_ratio"]),
            "num_positions": SEED_NUM_POSITIONS,
        }
        spec.setdefault("source", str(folder))
        encoder = cls(spec)
        weights = folder / SEED_VISUAL_WEIGHTS
        load_strict(encoder, read_weights(weights), str(weights), "the Qwen-VL trunk its visual_config.json describes")
        encoder.seed_visual_config = visual
        encoder.pretrained_image_processor = None
        return encoder


def split_qwen_vl_visual_state(
    visual_state: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split ``transformer.visual.*`` tensors (prefix removed) into the trunk's and the cross_attn projector's.

    The projector's names are Qwen-VL's resampler names with ``attn_pool.`` dropped: ``query``, ``pos_embed``,
    ``kv_proj.weight``, ``attn.*``, ``ln_q.*``, ``ln_kv.*``, plus ``ln_post.*`` and ``proj``.
    """
    trunk, projector = {}, {}
    for key, tensor in visual_state.items():
        if key.startswith("attn_pool."):
            projector[key[len("attn_pool.") :]] = tensor
        elif key.startswith(RESAMPLER_PREFIXES):
            projector[key] = tensor
        else:
            trunk[key] = tensor
    return trunk, projector


def read_prefixed_tensors(path: str | Path, prefix: str, **hub_kwargs: Any) -> dict[str, torch.Tensor]:
    """Read only the tensors whose names start with ``prefix`` from a (possibly sharded) checkpoint.

    safetensors files are read lazily, so a 10B-parameter Qwen-VL costs only its visual part in memory. Pickled
    ``.bin`` shards load with ``weights_only=True``.
    """
    from huggingface_hub import hf_hub_download
    from safetensors import safe_open

    def local(name: str) -> Path | None:
        candidate = Path(path) / name
        if candidate.exists():
            return candidate
        if Path(path).exists():
            return None
        try:
            return Path(hf_hub_download(str(path), name, **hub_kwargs))
        except Exception:  # noqa: BLE001 - a missing optional file on the hub is not an error here
            return None

    for index_name, single_name in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = local(index_name)
        files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index else [single_name]
        paths = [p for p in (local(f) for f in files) if p is not None]
        if not paths:
            continue
        out: dict[str, torch.Tensor] = {}
        for file in paths:
            if file.suffix == ".safetensors":
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        if key.startswith(prefix):
                            out[key[len(prefix) :]] = handle.get_tensor(key)
            else:
                state = torch.load(file, map_location="cpu", weights_only=True)
                out.update({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        if not out:
            raise ValueError(f"{path}: no tensors named {prefix}* in {', '.join(p.name for p in paths)}")
        return out
    raise FileNotFoundError(
        f"{path}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json) found"
    )
